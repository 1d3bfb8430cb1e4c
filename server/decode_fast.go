package server

import (
	"math"
	"strconv"
)

// fastStrict is the strict decoder's fast path: one pass over the bytes, with no tokens and no
// values built, that reports true only for a body the walker (strictValue) would accept against
// sh: well-formed JSON, exactly one value, no member twice in any case, no member a closed shape
// does not name, nesting within MaxNestingDepth, finite numbers. Anything it is not sure of
// (a key with an escape, a syntax error, any refusal) reports false, and the walker then decides
// and words the error as before. The walker was most of a request's CPU: it reads the body
// token by token through encoding/json's Decoder. Body must be valid UTF-8 (checked by the
// caller). FuzzFastStrictAgrees holds the two to each other.
func fastStrict(body []byte, sh *shape) bool {
	s := fastScanner{b: body}
	s.space()
	if !s.value(sh, 1) {
		return false
	}
	s.space()
	return s.i == len(s.b)
}

type fastScanner struct {
	b []byte
	i int
}

func (s *fastScanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// value scans one value at nesting level depth (the level it has when it is an object or array).
func (s *fastScanner) value(sh *shape, depth int) bool {
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '{':
		return depth <= MaxNestingDepth && s.object(sh, depth)
	case c == '[':
		return depth <= MaxNestingDepth && s.array(sh, depth)
	case c == '"':
		_, ok := s.str(false)
		return ok
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	}
	return false
}

func (s *fastScanner) literal(word string) bool {
	if len(s.b)-s.i < len(word) || string(s.b[s.i:s.i+len(word)]) != word {
		return false
	}
	s.i += len(word)
	return true
}

// object scans {...}; s.b[s.i] is '{'.
func (s *fastScanner) object(sh *shape, depth int) bool {
	s.i++
	s.space()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return true
	}
	var seen []string // folded names; objects are small
	var seenSet map[string]struct{}
	for {
		if s.i >= len(s.b) || s.b[s.i] != '"' {
			return false
		}
		key, ok := s.str(true)
		if !ok {
			return false
		}
		var member *shape
		if sh != nil {
			if sh.closed {
				m, known := sh.fields[key]
				if !known {
					return false
				}
				member = m
			} else {
				member = sh.elem
			}
		}
		fk := foldKey(key)
		if seenSet != nil {
			if _, dup := seenSet[fk]; dup {
				return false
			}
			seenSet[fk] = struct{}{}
		} else {
			for _, k := range seen {
				if k == fk {
					return false
				}
			}
			seen = append(seen, fk)
			if len(seen) > 16 {
				seenSet = make(map[string]struct{}, 2*len(seen))
				for _, k := range seen {
					seenSet[k] = struct{}{}
				}
			}
		}
		if !s.colon() || !s.value(member, depth+1) {
			return false
		}
		if more, ok := s.next('}'); !ok || !more {
			return ok
		}
	}
}

// array scans [...]; s.b[s.i] is '['.
func (s *fastScanner) array(sh *shape, depth int) bool {
	s.i++
	var elem *shape
	if sh != nil && !sh.closed {
		elem = sh.elem
	}
	s.space()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		return true
	}
	for {
		if !s.value(elem, depth+1) {
			return false
		}
		if more, ok := s.next(']'); !ok || !more {
			return ok
		}
	}
}

// colon reads the ':' after a member name and the spaces around it.
func (s *fastScanner) colon() bool {
	s.space()
	if s.i >= len(s.b) || s.b[s.i] != ':' {
		return false
	}
	s.i++
	s.space()
	return true
}

// next reads what follows a member or an element: ',' (more) or closer (done).
func (s *fastScanner) next(closer byte) (more, ok bool) {
	s.space()
	if s.i >= len(s.b) {
		return false, false
	}
	switch s.b[s.i] {
	case ',':
		s.i++
		s.space()
		return true, true
	case closer:
		s.i++
		return false, true
	}
	return false, false
}

// str scans a string; s.b[s.i] is '"'. A key (asKey) with an escape is left to the walker, which
// compares decoded names; it is returned raw otherwise.
func (s *fastScanner) str(asKey bool) (string, bool) {
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			s.i = j + 1
			if asKey {
				return string(s.b[start:j]), true
			}
			return "", true
		case c == '\\':
			if asKey || j+1 >= len(s.b) {
				return "", false
			}
			switch s.b[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j++
			case 'u':
				if j+5 >= len(s.b) {
					return "", false
				}
				for _, h := range s.b[j+2 : j+6] {
					if !isHex(h) {
						return "", false
					}
				}
				j += 5
			default:
				return "", false
			}
		case c < 0x20:
			return "", false // a control character: invalid JSON, the walker says where
		}
	}
	return "", false
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// number scans a JSON number and checks it is a finite float64.
func (s *fastScanner) number() bool {
	start := s.i
	if s.b[s.i] == '-' {
		s.i++
	}
	digits := func() int {
		n := 0
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	if s.i >= len(s.b) {
		return false
	}
	if s.b[s.i] == '0' {
		s.i++
	} else if digits() == 0 {
		return false
	}
	exponent := false
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if digits() == 0 {
			return false
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		exponent = true
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if digits() == 0 {
			return false
		}
	}
	// Without an exponent, fewer than 300 characters cannot pass float64's range (about 1.8e308).
	if !exponent && s.i-start < 300 {
		return true
	}
	f, err := strconv.ParseFloat(string(s.b[start:s.i]), 64)
	return err == nil && !math.IsInf(f, 0)
}
