package server

import (
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"
)

// The Host check defends the API against DNS rebinding: a web page on attacker.example whose
// name is re-pointed at 127.0.0.1 makes the browser send its requests to custody, and only the
// Host header (attacker.example) tells them apart. Custody's default listener is loopback and
// without authentication, so such a page could otherwise ask for decisions and read the answers.
//
// A request is served when its Host names:
//   - the address the connection arrived on (the listen address, or the interface address of a
//     0.0.0.0 listener), with its port;
//   - for a loopback connection, a loopback name with that port: localhost, 127.0.0.1, [::1];
//   - the host of WithPublicURL (any port the Host header names must be the URL's);
//   - a name given to WithAllowedHosts.
//
// Anything else is a 421 misdirected_request. Requests not served by net/http's Server (a handler
// called directly, as in tests) carry no connection address and are not checked.

// WithAllowedHosts adds names the Host header may carry besides the listen address and the
// public URL's host: "name" (any port) or "name:port", such as a load balancer's or a
// Kubernetes service's name.
func WithAllowedHosts(hosts ...string) Option {
	return func(s *Server) {
		for _, h := range hosts {
			if h = strings.TrimSpace(h); h != "" {
				s.allowedHosts = append(s.allowedHosts, h)
			}
		}
	}
}

// checkHost refuses requests whose Host header names neither this server nor its public URL.
func (s *Server) checkHost(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		local, ok := req.Context().Value(http.LocalAddrContextKey).(net.Addr)
		if !ok {
			return next(c)
		}
		if !s.hostAllowed(req.Host, local, req.TLS != nil) {
			return errorf(CodeMisdirectedRequest, "Host "+quoteHost(req.Host)+" is not this server: use its address, its --public-url or an --allowed-host")
		}
		return next(c)
	}
}

// hostAllowed reports whether host, a Host header, names the server that accepted a connection
// on local (tls says whether it was HTTPS, for a Host without a port).
func (s *Server) hostAllowed(host string, local net.Addr, tls bool) bool {
	name, port, hasPort := splitHost(host)
	if name == "" {
		return false
	}
	defaultPort := "80"
	if tls {
		defaultPort = "443"
	}
	if ap, err := netip.ParseAddrPort(local.String()); err == nil {
		lport := strconv.Itoa(int(ap.Port()))
		reqPort := port
		if !hasPort {
			reqPort = defaultPort
		}
		if reqPort == lport {
			if ip, err := netip.ParseAddr(name); err == nil && ip.Unmap() == ap.Addr().Unmap() {
				return true
			}
			if ap.Addr().IsLoopback() && isLoopbackName(name) {
				return true
			}
		}
	}
	if s.publicURL != "" {
		if u, err := url.Parse(s.publicURL); err == nil {
			pname, pport, pHasPort := splitHost(u.Host)
			if !pHasPort {
				pport = map[string]string{"https": "443", "http": "80"}[u.Scheme]
			}
			if name == pname && (!hasPort || port == pport) {
				return true
			}
		}
	}
	for _, allowed := range s.allowedHosts {
		aname, aport, aHasPort := splitHost(allowed)
		if name == aname && (!aHasPort || (hasPort && port == aport) || (!hasPort && aport == defaultPort)) {
			return true
		}
	}
	return false
}

// splitHost splits a Host header into a lower-case name without brackets or trailing dot, and
// its port.
func splitHost(host string) (name, port string, hasPort bool) {
	host = strings.ToLower(strings.TrimSpace(host))
	if h, p, err := net.SplitHostPort(host); err == nil {
		name, port, hasPort = h, p, true
	} else {
		name = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	}
	name = strings.TrimSuffix(name, ".")
	if hasPort && (port == "" || strings.Trim(port, "0123456789") != "") {
		return "", "", false
	}
	return name, port, hasPort
}

func isLoopbackName(name string) bool {
	if name == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(name)
	return err == nil && ip.Unmap().IsLoopback()
}

// quoteHost quotes a Host header for an error message, bounded: it is attacker-controlled.
func quoteHost(h string) string {
	if len(h) > 100 {
		h = h[:100] + "..."
	}
	return "\"" + strings.ToValidUTF8(h, "?") + "\""
}
