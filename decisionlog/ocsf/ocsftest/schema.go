package ocsftest

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// SchemaDir is the OCSF schema snapshot the tests validate against (see testdata/schema/README.md),
// found beside this file so that tests in any package use it. OCSF_SCHEMA_DIR points the tests
// at a full schema checkout instead.
func SchemaDir() string {
	if d := os.Getenv("OCSF_SCHEMA_DIR"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "testdata", "schema")
}

// attr is one attribute as a class or object defines it, merged with the dictionary.
type attr struct {
	Type        string // a dictionary type (string_t, ...), "object", or an object name
	IsArray     bool
	Requirement string
	Enum        map[string]string // value -> caption
	Profile     string            // the profile that brought it in, if any
}

// def is a resolved class or object: its attributes after extends and $include.
type def struct {
	Name        string
	Attrs       map[string]*attr
	AtLeastOne  []string
	JustOne     []string
	ClassUID    int
	CategoryUID int
}

// Schema validates events against the OCSF source files: the dictionary, objects, events and
// profiles, resolved as the OCSF server does (extends, $include of profiles, per-class
// attribute overrides). It loads files lazily and records which it read.
type Schema struct {
	dir     string
	dict    map[string]json.RawMessage
	types   map[string]string // type -> base type
	mu      sync.Mutex
	objects map[string]*def
	classes map[int]*def
	read    map[string]bool
}

type rawDef struct {
	Name        string                     `json:"name"`
	Extends     string                     `json:"extends"`
	UID         *int                       `json:"uid"`
	Category    string                     `json:"category"`
	Attributes  map[string]json.RawMessage `json:"attributes"`
	Constraints struct {
		AtLeastOne []string `json:"at_least_one"`
		JustOne    []string `json:"just_one"`
	} `json:"constraints"`
}

type rawAttr struct {
	Type        string                     `json:"type"`
	ObjectType  string                     `json:"object_type"`
	IsArray     *bool                      `json:"is_array"`
	Requirement string                     `json:"requirement"`
	Enum        map[string]json.RawMessage `json:"enum"`
}

// Load reads the schema snapshot's dictionary; classes and objects are read as events need them.
func Load(t testing.TB) *Schema {
	t.Helper()
	s := &Schema{dir: SchemaDir(), types: map[string]string{}, objects: map[string]*def{}, classes: map[int]*def{}, read: map[string]bool{}}
	var dict struct {
		Attributes map[string]json.RawMessage `json:"attributes"`
		Types      struct {
			Attributes map[string]struct {
				Type string `json:"type"`
			} `json:"attributes"`
		} `json:"types"`
	}
	s.readJSON(t, "dictionary.json", &dict)
	s.dict = dict.Attributes
	for name, ty := range dict.Types.Attributes {
		s.types[name] = ty.Type
	}
	return s
}

func (s *Schema) readJSON(t testing.TB, rel string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, rel))
	if err != nil {
		t.Fatalf("ocsf schema: %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("ocsf schema: %s: %v", rel, err)
	}
	s.mu.Lock()
	s.read[rel] = true
	s.mu.Unlock()
}

func parseEnum(raw map[string]json.RawMessage) map[string]string {
	if raw == nil {
		return nil
	}
	out := map[string]string{}
	for k, v := range raw {
		var e struct {
			Caption string `json:"caption"`
		}
		_ = json.Unmarshal(v, &e)
		out[k] = e.Caption
	}
	return out
}

// merge applies a definition's attributes (and its $include profiles) over attrs.
func (s *Schema) merge(t testing.TB, attrs map[string]*attr, raw map[string]json.RawMessage, profile string) {
	t.Helper()
	if inc, ok := raw["$include"]; ok {
		var files []string
		if err := json.Unmarshal(inc, &files); err != nil {
			t.Fatalf("ocsf schema: $include: %v", err)
		}
		for _, f := range files {
			var p rawDef
			s.readJSON(t, f, &p)
			s.merge(t, attrs, p.Attributes, p.Name)
		}
	}
	for name, body := range raw {
		if name == "$include" {
			continue
		}
		var ra rawAttr
		if err := json.Unmarshal(body, &ra); err != nil {
			t.Fatalf("ocsf schema: attribute %s: %v", name, err)
		}
		a, ok := attrs[name]
		if !ok {
			a = s.dictAttr(t, name)
			a.Profile = profile
			attrs[name] = a
		} else if profile == "" {
			// An override in the class itself (e.g. "profile": null) belongs to the class.
			var probe map[string]json.RawMessage
			_ = json.Unmarshal(body, &probe)
			if _, has := probe["profile"]; has {
				a.Profile = ""
			}
		}
		if ra.Requirement != "" {
			a.Requirement = ra.Requirement
		}
		if ra.Type != "" {
			a.Type = ra.Type
		}
		if e := parseEnum(ra.Enum); e != nil {
			if a.Enum == nil {
				a.Enum = map[string]string{}
			}
			for k, v := range e {
				a.Enum[k] = v
			}
		}
	}
}

func (s *Schema) dictAttr(t testing.TB, name string) *attr {
	t.Helper()
	body, ok := s.dict[name]
	if !ok {
		t.Fatalf("ocsf schema: attribute %q is not in the dictionary", name)
	}
	var ra rawAttr
	if err := json.Unmarshal(body, &ra); err != nil {
		t.Fatalf("ocsf schema: dictionary %s: %v", name, err)
	}
	a := &attr{Type: ra.Type, IsArray: ra.IsArray != nil && *ra.IsArray, Enum: parseEnum(ra.Enum)}
	if ra.ObjectType != "" {
		a.Type = ra.ObjectType
	}
	return a
}

// object resolves objects/<name>.json with its extends chain.
func (s *Schema) object(t testing.TB, name string) *def {
	t.Helper()
	s.mu.Lock()
	d, ok := s.objects[name]
	s.mu.Unlock()
	if ok {
		return d
	}
	var raw rawDef
	s.readJSON(t, filepath.Join("objects", name+".json"), &raw)
	d = &def{Name: name, Attrs: map[string]*attr{}}
	if raw.Extends != "" && raw.Extends != "object" {
		parent := s.object(t, raw.Extends)
		for k, v := range parent.Attrs {
			c := *v
			d.Attrs[k] = &c
		}
		d.AtLeastOne, d.JustOne = parent.AtLeastOne, parent.JustOne
	}
	s.merge(t, d.Attrs, raw.Attributes, "")
	if raw.Constraints.AtLeastOne != nil {
		d.AtLeastOne = raw.Constraints.AtLeastOne
	}
	if raw.Constraints.JustOne != nil {
		d.JustOne = raw.Constraints.JustOne
	}
	s.mu.Lock()
	s.objects[name] = d
	s.mu.Unlock()
	return d
}

// classFiles maps class UIDs to event files; only the classes custody emits are listed, so only
// their files need to be in the snapshot.
var classFiles = map[int]string{
	0:    "events/base_event.json",
	6003: "events/application/api_activity.json",
}

var parentFiles = map[string]string{
	"base_event":  "events/base_event.json",
	"application": "events/application/application.json",
}

func (s *Schema) class(t testing.TB, uid int) *def {
	t.Helper()
	s.mu.Lock()
	d, ok := s.classes[uid]
	s.mu.Unlock()
	if ok {
		return d
	}
	file, ok := classFiles[uid]
	if !ok {
		t.Fatalf("ocsf schema: class_uid %d is not one custody emits", uid)
	}
	d = s.eventDef(t, file)
	s.mu.Lock()
	s.classes[uid] = d
	s.mu.Unlock()
	return d
}

func (s *Schema) eventDef(t testing.TB, file string) *def {
	t.Helper()
	var raw rawDef
	s.readJSON(t, file, &raw)
	d := &def{Name: raw.Name, Attrs: map[string]*attr{}}
	if raw.Extends != "" {
		pf, ok := parentFiles[raw.Extends]
		if !ok {
			t.Fatalf("ocsf schema: unknown parent class %q", raw.Extends)
		}
		parent := s.eventDef(t, pf)
		for k, v := range parent.Attrs {
			c := *v
			if v.Enum != nil {
				c.Enum = maps(v.Enum)
			}
			d.Attrs[k] = &c
		}
		d.CategoryUID = parent.CategoryUID
	}
	if raw.Category != "" && raw.Category != "other" {
		var cats struct {
			Attributes map[string]struct {
				UID int `json:"uid"`
			} `json:"attributes"`
		}
		s.readJSON(t, "categories.json", &cats)
		d.CategoryUID = cats.Attributes[raw.Category].UID
	}
	if raw.UID != nil {
		d.ClassUID = d.CategoryUID*1000 + *raw.UID
	}
	s.merge(t, d.Attrs, raw.Attributes, "")
	return d
}

func maps(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Validate checks one event, as JSON, against the schema and returns every problem found:
// attribute names, types, required attributes, at_least_one and just_one constraints, enum
// values and their captions, objects recursively, and attributes of profiles that
// metadata.profiles does not declare.
func (s *Schema) Validate(t testing.TB, event []byte) []string {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(event, &v); err != nil {
		return []string{"not a JSON object: " + err.Error()}
	}
	uid, ok := number(v["class_uid"])
	if !ok {
		return []string{"class_uid missing or not a number"}
	}
	c := s.class(t, int(uid))
	var errs []string
	if c.ClassUID != int(uid) {
		errs = append(errs, fmt.Sprintf("class_uid %d: schema says %d", int(uid), c.ClassUID))
	}
	if cat, _ := number(v["category_uid"]); int(cat) != c.CategoryUID {
		errs = append(errs, fmt.Sprintf("category_uid %v: class %s is in category %d", v["category_uid"], c.Name, c.CategoryUID))
	}
	if act, ok := number(v["activity_id"]); ok {
		if tu, _ := number(v["type_uid"]); int64(tu) != int64(uid)*100+int64(act) {
			errs = append(errs, fmt.Sprintf("type_uid %v is not class_uid*100+activity_id", v["type_uid"]))
		}
	}
	var profiles []string
	if md, ok := v["metadata"].(map[string]any); ok {
		if ps, ok := md["profiles"].([]any); ok {
			for _, p := range ps {
				name, _ := p.(string)
				profiles = append(profiles, name)
			}
		}
	}
	s.check(t, c, v, "", profiles, &errs)
	return errs
}

func (s *Schema) check(t testing.TB, d *def, v map[string]any, path string, profiles []string, errs *[]string) {
	t.Helper()
	fail := func(format string, args ...any) { *errs = append(*errs, path+fmt.Sprintf(format, args...)) }
	for name, a := range d.Attrs {
		if _, ok := v[name]; !ok && a.Requirement == "required" && (a.Profile == "" || slices.Contains(profiles, a.Profile)) {
			fail("%s: required by %s, missing", name, d.Name)
		}
	}
	if len(d.AtLeastOne) > 0 && !slices.ContainsFunc(d.AtLeastOne, func(n string) bool { _, ok := v[n]; return ok }) {
		fail("(%s) needs at least one of %v", d.Name, d.AtLeastOne)
	}
	if len(d.JustOne) > 0 {
		n := 0
		for _, k := range d.JustOne {
			if _, ok := v[k]; ok {
				n++
			}
		}
		if n != 1 {
			fail("(%s) needs exactly one of %v", d.Name, d.JustOne)
		}
	}
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, name := range keys {
		val := v[name]
		a, ok := d.Attrs[name]
		if !ok {
			fail("%s: not an attribute of %s", name, d.Name)
			continue
		}
		if a.Profile != "" && !slices.Contains(profiles, a.Profile) {
			fail("%s: belongs to profile %s, which metadata.profiles does not list", name, a.Profile)
		}
		p := path + name
		if a.IsArray {
			arr, ok := val.([]any)
			if !ok {
				fail("%s: want an array", name)
				continue
			}
			for i, el := range arr {
				s.checkValue(t, a, el, fmt.Sprintf("%s[%d]", p, i), profiles, errs)
			}
			continue
		}
		s.checkValue(t, a, val, p, profiles, errs)
		if a.Enum != nil && !derived[name] {
			if id, ok := number(val); ok {
				key := strconv.FormatInt(int64(id), 10)
				caption, known := a.Enum[key]
				if !known {
					fail("%s: %v is not one of its enum values", name, val)
				} else if sib, ok := strings.CutSuffix(name, "_id"); ok && key != "99" {
					if got, has := v[sib].(string); has && got != caption {
						fail("%s: %q is not the caption %q of %s %s", sib, got, caption, name, key)
					}
				}
			}
		}
	}
}

func (s *Schema) checkValue(t testing.TB, a *attr, val any, path string, profiles []string, errs *[]string) {
	t.Helper()
	fail := func(format string, args ...any) { *errs = append(*errs, path+": "+fmt.Sprintf(format, args...)) }
	base := a.Type
	for {
		next, ok := s.types[base]
		if !ok || next == "" {
			break
		}
		base = next
	}
	switch base {
	case "string_t":
		if _, ok := val.(string); !ok {
			fail("want a string (%s), got %T", a.Type, val)
		}
	case "integer_t", "long_t":
		if f, ok := number(val); !ok || f != math.Trunc(f) {
			fail("want an integer (%s), got %v", a.Type, val)
		}
	case "float_t":
		if _, ok := number(val); !ok {
			fail("want a number, got %T", val)
		}
	case "boolean_t":
		if _, ok := val.(bool); !ok {
			fail("want a boolean, got %T", val)
		}
	case "json_t":
	case "object":
		if _, ok := val.(map[string]any); !ok {
			fail("want an object, got %T", val)
		}
	default:
		obj, ok := val.(map[string]any)
		if !ok {
			fail("want a %s object, got %T", a.Type, val)
			return
		}
		s.check(t, s.object(t, a.Type), obj, path+".", profiles, errs)
	}
}

// derived attributes have an enum per class in the OCSF server (generated from the class and
// category files); Validate checks them against the class instead.
var derived = map[string]bool{"class_uid": true, "category_uid": true, "type_uid": true}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	return 0, false
}

// Files lists the schema files read so far, relative to the schema directory.
func (s *Schema) Files() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.read))
	for f := range s.read {
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}

// Check fails t for every problem Validate finds in event.
func (s *Schema) Check(t testing.TB, event []byte) {
	t.Helper()
	for _, p := range s.Validate(t, event) {
		t.Errorf("OCSF: %s\n  in %s", p, event)
	}
}
