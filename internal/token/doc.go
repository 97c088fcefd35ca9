// Package token owns the cryptography of per-user LLM proxy credentials:
// Ed25519 signing keys and their rotation policy, the storage format of the
// private keys, the public JWKS handed to verifiers, issuing signed JWTs for
// an LLMUser, and verifying them (with a bounded cache) in the proxy.
//
// It deliberately knows nothing of Kubernetes or HTTP: callers move the bytes
// produced here into Secrets, ConfigMaps and responses, and map the typed
// [Error] reasons onto status codes.
//
// Key lifecycle: the newest key is the only one that signs. When a newer key
// is created the previous one stops signing but stays published until every
// token it could have signed has expired; [PlanRotation] computes that
// decision and the exact moment it next changes.
package token
