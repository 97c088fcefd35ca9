// Package refresh serves POST /auth/refresh: a holder of a valid token of an
// active user exchanges it for a fresh one. It runs where the private key
// lives (the operator), never in the proxy.
package refresh

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// User is what the refresh decision needs to know of an LLMUser.
type User struct {
	UID             string
	TokenGeneration int64
	Suspended       bool
	AllowRefresh    bool
	TTL             time.Duration
}

// Users looks up users by namespace and name; ok is false for an unknown user.
type Users interface {
	User(ctx context.Context, namespace, name string) (u User, ok bool, err error)
}

// Keys gives the issuer of the current signing key and a verifier for every
// published key; a [token.KeyStore] does.
type Keys interface {
	Signer() (*token.Issuer, bool)
	Verifier() *token.Verifier
}

// Handler serves POST /auth/refresh.
type Handler struct {
	Users Users
	Keys  Keys
}

// Response is the OpenAI-style body of a successful refresh.
type Response struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		refuse(w, http.StatusMethodNotAllowed, openaiapi.CodeMethodNotAllowed, "use POST /auth/refresh with the token in the Authorization header")
		return
	}
	raw, present, ok := openaiapi.BearerToken(r.Header)
	switch {
	case !present:
		refuse(w, http.StatusUnauthorized, openaiapi.CodeInvalidAPIKey, "missing API key: send the header 'Authorization: Bearer <token>' with the token to refresh")
		return
	case !ok:
		refuse(w, http.StatusUnauthorized, openaiapi.CodeInvalidAPIKey, "malformed Authorization header: expected 'Bearer <token>'")
		return
	}
	signer, ok := h.Keys.Signer()
	if !ok {
		refuse(w, http.StatusServiceUnavailable, openaiapi.CodeUnavailable, "no signing key loaded yet; retry shortly")
		return
	}
	claims, err := h.Keys.Verifier().Verify(raw)
	if err != nil {
		var te *token.Error
		msg := "invalid token"
		if errors.As(err, &te) {
			msg = te.Error()
		}
		refuse(w, http.StatusUnauthorized, openaiapi.CodeInvalidAPIKey, msg)
		return
	}
	u, found, err := h.Users.User(r.Context(), claims.Namespace, claims.Name)
	if err != nil {
		refuse(w, http.StatusServiceUnavailable, openaiapi.CodeUnavailable, "cannot look up the user: "+err.Error())
		return
	}
	switch {
	case !found || u.UID != claims.UID:
		refuse(w, http.StatusUnauthorized, openaiapi.CodeInvalidAPIKey, "token revoked: the user no longer exists")
		return
	case u.Suspended:
		refuse(w, http.StatusUnauthorized, openaiapi.CodeInvalidAPIKey, "token revoked: the user is suspended")
		return
	case claims.Generation < u.TokenGeneration:
		refuse(w, http.StatusUnauthorized, openaiapi.CodeInvalidAPIKey, "token revoked: a newer token generation was issued")
		return
	case !u.AllowRefresh:
		refuse(w, http.StatusForbidden, openaiapi.CodeRefreshNotAllowed, "refresh is disabled for this user (spec.token.allowRefresh is false)")
		return
	}
	fresh, c, err := signer.Issue(token.IssueRequest{
		Namespace: claims.Namespace, Name: claims.Name, UID: claims.UID,
		Generation: max(claims.Generation, u.TokenGeneration), TTL: u.TTL,
	})
	if err != nil {
		refuse(w, http.StatusInternalServerError, openaiapi.CodeInternal, "cannot issue a token")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(Response{
		AccessToken: fresh, TokenType: "bearer",
		ExpiresIn: int64(c.ExpiresAt.Sub(c.IssuedAt.Time) / time.Second),
	})
}

// refuse answers in OpenAI's error shape, like the proxy in front of this
// endpoint, so a client handles a refused refresh as any other API error.
func refuse(w http.ResponseWriter, status int, code, msg string) {
	typ := openaiapi.TypeInvalidRequest
	if status >= 500 {
		typ = openaiapi.TypeServer
	}
	w.Header().Set("Cache-Control", "no-store")
	openaiapi.WriteError(w, status, typ, code, "", msg)
}
