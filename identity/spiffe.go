package identity

import (
	"crypto/x509"
	"net/url"
	"strings"
)

// SPIFFEID returns the SPIFFE ID in a verified client certificate's URI SANs, or "" when it has
// none or more than one (the SPIFFE X.509-SVID spec allows exactly one).
func SPIFFEID(cert *x509.Certificate) string {
	if cert == nil {
		return ""
	}
	var found string
	for _, u := range cert.URIs {
		if !isSPIFFE(u) {
			continue
		}
		if found != "" {
			return ""
		}
		found = u.String()
	}
	return found
}

func isSPIFFE(u *url.URL) bool {
	return u != nil && u.Scheme == "spiffe" && u.Host != "" && u.User == nil && u.RawQuery == "" && u.Fragment == "" &&
		!strings.Contains(u.Host, ":")
}
