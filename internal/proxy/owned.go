package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// ownedValues are what the proxy writes into the members it owns
// (endpoints.go, ownPriority and the others, say why it owns each).
type ownedValues struct {
	// priority is the quota's spec.priority (nil: none is sent).
	priority *int32
	// cacheSalt isolates the prefix cache ("": none is sent).
	cacheSalt string
	// requestID is the proxy's request id, for endpoints that take theirs
	// from the body.
	requestID string
	// keepKV: the upstream allows clients' kv_transfer_params.
	keepKV bool
}

// ownedEdits drops every member the proxy owns that the client sent
// (kv_transfer_params stays when keepKV), then adds the proxy's own that
// the endpoint takes. A client's members are looked for only when parse
// saw one, so the common request pays nothing for the second walk.
func (pr *parsed) ownedEdits(body []byte, ep *endpoint, v ownedValues, sp []splice) []splice {
	if pr.owned {
		d := newDropper()
		it := newObjIter(body, 0)
		for m, ok := it.next(); ok; m, ok = it.next() {
			kept := v.keepKV && string(m.key) == ownKVTransfer
			if ep.fields[string(m.key)] == fieldOwned && !kept {
				d.drop(m)
			} else {
				d.keep(m)
			}
		}
		for _, s := range d.done() {
			sp = append(sp, splice{start: s.start, end: s.end})
		}
	}
	var add []byte
	if v.priority != nil && ep.takesPriority {
		add = strconv.AppendInt(append(add, `,"priority":`...), int64(*v.priority), 10)
	}
	if v.cacheSalt != "" && ep.takesCacheSalt {
		add = append(append(append(add, `,"cache_salt":"`...), v.cacheSalt...), '"')
	}
	if v.requestID != "" && ep.bodyRequestID {
		add = append(append(append(add, `,"request_id":"resp_`...), v.requestID...), '"')
	}
	if len(add) > 0 {
		sp = append(sp, splice{start: pr.closeBrace, end: pr.closeBrace, text: add})
	}
	return sp
}

// FairnessID is the flow a user's requests belong to for a scheduler's
// fair queuing: the quota for the users of a Shared quota (one tenant, one
// budget: splitting it per user would give a team a share of the GPUs that
// grows with its head count), the user otherwise. As a header value, ready
// for [User].
func FairnessID(namespace, user, quotaName string, shared bool) []string {
	if shared {
		return []string{namespace + "/quota/" + quotaName}
	}
	return []string{namespace + "/user/" + user}
}

// CacheSalt is the cache_salt of a user's requests for a quota's
// spec.cacheIsolation: "User" (the default) gives every user their own,
// "Quota" one for every user of the quota, "None" none. It is a digest of
// the object's identity, so it names no one and fits vLLM's limits (at
// most 128 characters, none of '@', '/', '\', NUL).
func CacheSalt(isolation, namespace, user, userUID, quotaName, quotaUID string) string {
	var id string
	switch isolation {
	case "None":
		return ""
	case "Quota":
		id = "quota\x00" + namespace + "\x00" + quotaName + "\x00" + quotaUID
	default:
		id = "user\x00" + namespace + "\x00" + user + "\x00" + userUID
	}
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}
