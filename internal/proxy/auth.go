package proxy

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// authenticate resolves the request's bearer token to a current user and its
// verified claims, or answers 401 saying exactly what is wrong with the token.
func (p *Proxy) authenticate(w http.ResponseWriter, r *http.Request) (User, *token.Claims, bool) {
	raw, present, ok := openaiapi.BearerToken(r.Header)
	if !present {
		return p.unauthorized(w, "", "", metrics.ReasonUnauthenticated,
			"Missing API key: send the header 'Authorization: Bearer <token>' with the token from your LLMUser's Secret.")
	}
	if !ok {
		return p.unauthorized(w, "", "", metrics.ReasonUnauthenticated,
			"Malformed Authorization header: expected 'Bearer <token>'.")
	}
	claims, err := p.verifier.Verify(raw)
	if err != nil {
		return p.unauthorized(w, "", "", metrics.ReasonUnauthenticated, tokenErrorMessage(err))
	}
	ns, name := claims.Namespace, claims.Name
	u, ok := p.dir.User(ns, name)
	switch {
	case !ok:
		// Counted without the name: a deleted user's series must not come
		// back each time an old token is tried.
		return p.unauthorized(w, ns, "", metrics.ReasonRevoked,
			"API key revoked: LLMUser "+ns+"/"+name+" no longer exists.")
	case u.UID != claims.UID:
		return p.unauthorized(w, ns, name, metrics.ReasonRevoked,
			"API key revoked: LLMUser "+ns+"/"+name+" was deleted and created again; use the token from its current Secret.")
	case claims.Generation < u.TokenGeneration:
		return p.unauthorized(w, ns, name, metrics.ReasonRevoked,
			"API key revoked: it is of token generation "+strconv.FormatInt(claims.Generation, 10)+
				" and LLMUser "+ns+"/"+name+" now requires generation "+strconv.FormatInt(u.TokenGeneration, 10)+
				" or later; use the token from its current Secret.")
	case u.Suspended:
		return p.unauthorized(w, ns, name, metrics.ReasonRevoked,
			"API key revoked: LLMUser "+ns+"/"+name+" is suspended.")
	}
	return u, claims, true
}

func (p *Proxy) unauthorized(w http.ResponseWriter, ns, name, reason, msg string) (User, *token.Claims, bool) {
	p.metrics.Reject(ns, name, reason)
	p.metrics.ObserveRequest(metrics.Request{Namespace: ns, User: name, Code: http.StatusUnauthorized})
	w.Header()["Www-Authenticate"] = []string{`Bearer realm="llm-proxy"`}
	openaiapi.WriteError(w, http.StatusUnauthorized, openaiapi.TypeInvalidRequest, openaiapi.CodeInvalidAPIKey, "", msg)
	return User{}, nil, false
}

// tokenErrorMessage turns a verification failure into a message saying
// which check failed. The verifier's detail (e.g. the expiry time) is kept.
func tokenErrorMessage(err error) string {
	var te *token.Error
	if !errors.As(err, &te) {
		return "Invalid API key: " + err.Error()
	}
	detail := ""
	if te.Err != nil {
		detail = " (" + te.Err.Error() + ")"
	}
	switch te.Reason {
	case token.ReasonMalformed:
		return "Malformed API key: not a valid token" + detail + "."
	case token.ReasonExpired:
		return "API key expired" + detail + "; fetch the renewed token from your LLMUser's Secret."
	case token.ReasonNotYetValid:
		return "API key not valid yet" + detail + "."
	case token.ReasonUnknownKey:
		return "API key signed by an unknown signing key" + detail + "; it may predate a key rotation. Fetch the current token from your LLMUser's Secret."
	case token.ReasonBadSignature:
		return "Invalid API key: bad signature" + detail + "."
	case token.ReasonWrongIssuer:
		return "Invalid API key: issued by another issuer" + detail + "."
	case token.ReasonWrongAudience:
		return "Invalid API key: issued for another audience" + detail + "."
	case token.ReasonMissingClaims:
		return "Invalid API key: missing claims" + detail + "."
	}
	return "Invalid API key: " + te.Error()
}
