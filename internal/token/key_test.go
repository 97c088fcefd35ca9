package token

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestGenerateKey(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600))
	k := mustKey(t, now)
	if k.ID != Thumbprint(k.Public) || len(k.ID) != 43 {
		t.Errorf("ID = %q, want the 43-char thumbprint %q", k.ID, Thumbprint(k.Public))
	}
	if !bytes.Equal(k.Private.Public().(ed25519.PublicKey), k.Public) {
		t.Error("private and public halves do not match")
	}
	if !k.CreatedAt.Equal(now) || k.CreatedAt.Location() != time.UTC {
		t.Errorf("CreatedAt = %v, want %v in UTC", k.CreatedAt, now)
	}
	if other := mustKey(t, now); other.ID == k.ID {
		t.Error("two generated keys share an ID")
	}
}

func TestThumbprintRFC8037(t *testing.T) {
	// RFC 8037 Appendix A.3.
	x, err := base64.RawURLEncoding.DecodeString("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := Thumbprint(x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"; got != want {
		t.Errorf("Thumbprint = %q, want %q", got, want)
	}
}

func TestActiveKey(t *testing.T) {
	if _, ok := ActiveKey(nil); ok {
		t.Error("ActiveKey(nil) reported a key")
	}
	a, b, c := mustKey(t, t0), mustKey(t, t0.Add(time.Hour)), mustKey(t, t0.Add(-time.Hour))
	keys := []Key{a, b, c}
	got, ok := ActiveKey(keys)
	if !ok || got.ID != b.ID {
		t.Errorf("ActiveKey = %q, want the newest %q", got.ID, b.ID)
	}
	if keys[0].ID != a.ID {
		t.Error("ActiveKey reordered its argument")
	}
}

func TestPrivateKeysRoundTrip(t *testing.T) {
	keys := []Key{
		mustKey(t, t0.Add(-48*time.Hour)),
		mustKey(t, t0.Add(123456789*time.Nanosecond)),
		mustKey(t, t0.Add(-24*time.Hour)),
	}
	data, err := EncodePrivateKeys(keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 1 || data[PrivateKeysDataKey] == nil {
		t.Fatalf("data keys = %v, want only %q", data, PrivateKeysDataKey)
	}
	got, err := DecodePrivateKeys(data)
	if err != nil {
		t.Fatal(err)
	}
	want := []Key{keys[1], keys[2], keys[0]} // newest first
	if len(got) != len(want) {
		t.Fatalf("decoded %d keys, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.ID != w.ID || !g.CreatedAt.Equal(w.CreatedAt) || !bytes.Equal(g.Public, w.Public) || !bytes.Equal(g.Private, w.Private) {
			t.Errorf("key %d = %+v, want %+v", i, g, w)
		}
	}

	again, err := EncodePrivateKeys([]Key{keys[2], keys[0], keys[1]})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again[PrivateKeysDataKey], data[PrivateKeysDataKey]) {
		t.Error("encoding the same set in another order produced different bytes")
	}

	empty, err := EncodePrivateKeys(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodePrivateKeys(empty); err != nil || len(got) != 0 {
		t.Errorf("empty set round trip = %v, %v", got, err)
	}
}

func TestEncodePrivateKeysErrors(t *testing.T) {
	k := mustKey(t, t0)
	other := mustKey(t, t0)
	publicOnly := k
	publicOnly.Private = nil
	mismatched := k
	mismatched.Private = other.Private
	noID := k
	noID.ID = ""

	tests := map[string][]Key{
		"public only":   {publicOnly},
		"mismatched":    {mismatched},
		"no id":         {noID},
		"duplicate kid": {k, k},
	}
	for name, keys := range tests {
		if _, err := EncodePrivateKeys(keys); err == nil {
			t.Errorf("%s: EncodePrivateKeys succeeded, want error", name)
		}
	}
}

func TestDecodePrivateKeys(t *testing.T) {
	k := mustKey(t, t0)
	other := mustKey(t, t0)
	x := base64.RawURLEncoding.EncodeToString(k.Public)
	d := base64.RawURLEncoding.EncodeToString(k.Private.Seed())
	entry := func(kid, x, d, extra string) []byte {
		return []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"` + kid + `","x":"` + x + `","d":"` + d + `"` + extra + `}]}`)
	}
	const created = `,"created_at":"2026-11-25T10:00:00Z"`

	tests := []struct {
		name    string
		data    map[string][]byte
		wantErr string // "" means success
		wantN   int
	}{
		{"nil", nil, "", 0},
		{"empty", map[string][]byte{}, "", 0},
		{"valid", map[string][]byte{PrivateKeysDataKey: entry(k.ID, x, d, created)}, "", 1},
		{"other entry only", map[string][]byte{"tls.key": []byte("x")}, "no \"keys.json\"", 0},
		{"not json", map[string][]byte{PrivateKeysDataKey: []byte("{")}, "decoding", 0},
		{"wrong kty", map[string][]byte{PrivateKeysDataKey: []byte(`{"keys":[{"kty":"RSA","kid":"a","n":"x","e":"AQAB"}]}`)}, "only OKP/Ed25519", 0},
		{"no private part", map[string][]byte{PrivateKeysDataKey: entry(k.ID, x, "", created)}, "no private part", 0},
		{"short seed", map[string][]byte{PrivateKeysDataKey: entry(k.ID, x, "AAAA", created)}, "seed", 0},
		{"seed of another key", map[string][]byte{PrivateKeysDataKey: entry(k.ID, x, base64.RawURLEncoding.EncodeToString(other.Private.Seed()), created)}, "does not match", 0},
		{"kid not thumbprint", map[string][]byte{PrivateKeysDataKey: entry("my-key", x, d, created)}, "thumbprint", 0},
		{"no created_at", map[string][]byte{PrivateKeysDataKey: entry(k.ID, x, d, "")}, "created_at", 0},
		{"bad x", map[string][]byte{PrivateKeysDataKey: entry(k.ID, "!!", d, created)}, "x is not", 0},
		{"duplicate kid", map[string][]byte{PrivateKeysDataKey: []byte(strings.Replace(string(entry(k.ID, x, d, created)), `}]}`, `},`+string(entry(k.ID, x, d, created))[9:], 1))}, "duplicate", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodePrivateKeys(tt.data)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("DecodePrivateKeys: %v", err)
				}
				if len(got) != tt.wantN {
					t.Fatalf("got %d keys, want %d", len(got), tt.wantN)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestJWKSRoundTrip(t *testing.T) {
	old, cur := mustKey(t, t0.Add(-time.Hour)), mustKey(t, t0)
	b, err := MarshalJWKS([]Key{old, cur})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Keys) != 2 {
		t.Fatalf("JWKS has %d keys: %s", len(doc.Keys), b)
	}
	for i, want := range []Key{cur, old} {
		got := doc.Keys[i]
		wantMembers := map[string]string{
			"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
			"kid": want.ID, "x": base64.RawURLEncoding.EncodeToString(want.Public),
		}
		if len(got) != len(wantMembers) {
			t.Errorf("key %d members = %v, want exactly %v", i, got, wantMembers)
		}
		for m, v := range wantMembers {
			if got[m] != v {
				t.Errorf("key %d %s = %q, want %q", i, m, got[m], v)
			}
		}
	}

	keys, err := ParseJWKS(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].ID != cur.ID || keys[1].ID != old.ID {
		t.Fatalf("ParseJWKS = %+v", keys)
	}
	for i, want := range []Key{cur, old} {
		if !bytes.Equal(keys[i].Public, want.Public) || keys[i].Private != nil {
			t.Errorf("key %d: public mismatch or private set", i)
		}
	}
}

func TestMarshalJWKSErrors(t *testing.T) {
	k := mustKey(t, t0)
	short := k
	short.Public = short.Public[:16]
	for name, keys := range map[string][]Key{
		"short public key": {short},
		"duplicate kid":    {k, k},
		"no id":            {{Public: k.Public}},
	} {
		if _, err := MarshalJWKS(keys); err == nil {
			t.Errorf("%s: MarshalJWKS succeeded, want error", name)
		}
	}
}

func TestParseJWKS(t *testing.T) {
	k := mustKey(t, t0)
	x := base64.RawURLEncoding.EncodeToString(k.Public)
	ok := `{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"` + x + `"}`
	set := func(entries ...string) string { return `{"keys":[` + strings.Join(entries, ",") + `]}` }

	tests := []struct {
		name    string
		data    string
		wantErr string // "" means success
		wantN   int
	}{
		{"empty set", `{"keys":[]}`, "", 0},
		{"minimal entry", set(ok), "", 1},
		{"full entry", set(`{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","use":"sig","x":"` + x + `"}`), "", 1},
		{"not json", `nope`, "decoding JWKS", 0},
		{"no keys array", `{}`, `no "keys"`, 0},
		{"keys not objects", `{"keys":[1]}`, "key 0", 0},
		{"RSA entry", set(ok, `{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}`), "only OKP/Ed25519", 0},
		{"EC entry", set(`{"kty":"EC","crv":"P-256","kid":"e","x":"a","y":"b"}`), "only OKP/Ed25519", 0},
		{"X25519 entry", set(`{"kty":"OKP","crv":"X25519","kid":"x","x":"` + x + `"}`), "only OKP/Ed25519", 0},
		{"wrong alg", set(`{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"ES256","x":"` + x + `"}`), "only EdDSA", 0},
		{"encryption key", set(`{"kty":"OKP","crv":"Ed25519","kid":"k1","use":"enc","x":"` + x + `"}`), "only sig", 0},
		{"no kid", set(`{"kty":"OKP","crv":"Ed25519","x":"` + x + `"}`), "missing kid", 0},
		{"short x", set(`{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"AAAA"}`), "x is not", 0},
		{"private material", set(`{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"` + x + `","d":"AAAA"}`), "private key material", 0},
		{"duplicate kid", set(ok, ok), "duplicate", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseJWKS([]byte(tt.data))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseJWKS: %v", err)
				}
				if len(got) != tt.wantN {
					t.Fatalf("got %d keys, want %d", len(got), tt.wantN)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestSigningKeyWaitsForActivation(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	old := Key{ID: "old", CreatedAt: t0.Add(-time.Hour)}
	fresh := Key{ID: "new", CreatedAt: t0}
	for _, tc := range []struct {
		name string
		keys []Key
		at   time.Time
		want string
	}{
		{"only key, brand new", []Key{fresh}, t0, "new"},
		{"new key not yet published long enough", []Key{fresh, old}, t0.Add(ActivationDelay - time.Nanosecond), "old"},
		{"new key activated", []Key{old, fresh}, t0.Add(ActivationDelay), "new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, ok := SigningKey(tc.keys, tc.at)
			if !ok || k.ID != tc.want {
				t.Errorf("SigningKey = %q, want %q", k.ID, tc.want)
			}
		})
	}
	if _, ok := SigningKey(nil, t0); ok {
		t.Error("a key from an empty set")
	}
}
