package identity_test

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/internal/tokentest"
)

// blockingJWKS serves is's JWKS; once blocked, each request signals entered and then waits for
// release (or the client giving up) before answering.
type blockingJWKS struct {
	srv      *httptest.Server
	block    atomic.Bool
	entered  chan struct{}
	release  chan struct{}
	fetches  atomic.Int32
	once     sync.Once
	released func()
}

func newBlockingJWKS(t *testing.T, is *tokentest.Issuer) *blockingJWKS {
	b := &blockingJWKS{entered: make(chan struct{}, 16), release: make(chan struct{})}
	b.released = func() { b.once.Do(func() { close(b.release) }) }
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.fetches.Add(1)
		if b.block.Load() {
			b.entered <- struct{}{}
			select {
			case <-b.release:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(is.JWKS(t))
	}))
	t.Cleanup(b.srv.Close)
	t.Cleanup(b.released) // before the server closes: a blocked handler would hold Close
	return b
}

// TestValidTokensDoNotWaitOnJWKS: while a JWKS fetch hangs, tokens whose key is cached verify.
// Before, the fetch ran under the key set's mutex: one token with an unknown kid (or the first
// token after the refresh interval) made every other verification of that issuer wait for the
// JWKS endpoint, 1.95 s for 16 valid tokens behind a slow one. The endpoint here blocks until the
// test releases it, so the valid verifications must complete while it is blocked.
func TestValidTokensDoNotWaitOnJWKS(t *testing.T) {
	tests := []struct {
		name string
		// stall starts the fetch that hangs, after the keys are cached.
		stall func(t *testing.T, v *identity.Verifier, clock *atomic.Int64, stranger string) <-chan error
	}{
		{"unknown kid refetch", func(t *testing.T, v *identity.Verifier, _ *atomic.Int64, stranger string) <-chan error {
			errc := make(chan error, 1)
			go func() {
				_, err := v.Verify(t.Context(), stranger)
				errc <- err
			}()
			return errc
		}},
		{"stale keys refresh", func(t *testing.T, v *identity.Verifier, clock *atomic.Int64, _ string) <-chan error {
			clock.Add(int64(2 * identity.DefaultJWKSRefresh)) // the next lookup finds the keys stale
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := tokentest.NewIssuer(t, issuerName)
			jwks := newBlockingJWKS(t, is)
			var clock atomic.Int64
			clock.Store(time.Now().UnixNano())
			v, err := identity.NewVerifier(identity.Config{
				Issuers:  []identity.Issuer{{Issuer: issuerName, JWKS: jwks.srv.URL}},
				Audience: audience,
			}, identity.WithClock(func() time.Time { return time.Unix(0, clock.Load()) }))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = v.Close() })
			claims := tokentest.Claims{"sub": alice, "aud": audience, "exp": time.Now().Add(time.Hour).Unix()}
			valid := is.Token(t, claims)
			if _, err := v.Verify(t.Context(), valid); err != nil { // caches the keys
				t.Fatal(err)
			}
			jwks.block.Store(true)
			stranger := tokentest.NewIssuer(t, issuerName).Token(t, claims)
			errc := tt.stall(t, v, &clock, stranger)
			if errc == nil { // the stale lookup itself starts the fetch, and must not wait for it
				if _, err := v.Verify(t.Context(), valid); err != nil {
					t.Fatalf("verify with stale keys: %v", err)
				}
			}
			select {
			case <-jwks.entered:
			case <-time.After(10 * time.Second):
				t.Fatal("no JWKS fetch started")
			}
			// The fetch is now blocked in the server until released.
			done := make(chan error, 16)
			for range 16 {
				go func() {
					_, err := v.Verify(t.Context(), valid)
					done <- err
				}()
			}
			for i := range 16 {
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("valid token %d: %v", i, err)
					}
				case <-time.After(10 * time.Second): // a guard against hanging, not a measurement
					jwks.released()
					t.Fatalf("valid token %d still waiting behind the blocked JWKS fetch", i)
				}
			}
			jwks.released()
			if errc != nil {
				if err := <-errc; err == nil {
					t.Error("a token with an unknown kid verified")
				}
			}
			if n := jwks.fetches.Load(); n != 2 {
				t.Errorf("%d JWKS fetches, want 2 (the first, then the one that blocked)", n)
			}
		})
	}
}

// TestUnknownKidsShareOneFetch: tokens with unknown key IDs that arrive while a fetch is in flight
// wait for that fetch instead of starting their own.
func TestUnknownKidsShareOneFetch(t *testing.T) {
	is := tokentest.NewIssuer(t, issuerName)
	jwks := newBlockingJWKS(t, is)
	jwks.block.Store(true)
	v, err := identity.NewVerifier(identity.Config{
		Issuers:  []identity.Issuer{{Issuer: issuerName, JWKS: jwks.srv.URL}},
		Audience: audience,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = v.Close() })
	claims := tokentest.Claims{"sub": alice, "aud": audience}
	tok := is.Token(t, claims)
	done := make(chan error, 8)
	for range 8 { // the first tokens: no keys yet, all wait for the first fetch
		go func() {
			_, err := v.Verify(t.Context(), tok)
			done <- err
		}()
	}
	<-jwks.entered
	jwks.released()
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if n := jwks.fetches.Load(); n != 1 {
		t.Errorf("%d JWKS fetches for 8 concurrent first tokens, want 1", n)
	}
}
