package quota

import (
	"strconv"
	"strings"
	"sync"
)

// hashSlots is the number of Redis Cluster hash slots.
const hashSlots = 16384

// hashSlot is the Redis Cluster hash slot of a hash tag: CRC16 (XMODEM) of
// it, modulo 16384, as Redis computes it for a key {tag}...
func hashSlot(tag string) uint16 {
	var crc uint16
	for i := 0; i < len(tag); i++ {
		crc ^= uint16(tag[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % hashSlots
}

// slotTags holds, for every hash slot, the shortest base-36 number (the
// first found) whose hash slot it is: the tag of that slot's leases and
// seeded marker. Finding all 16384 takes about 170,000 CRCs, once.
var slotTags = sync.OnceValue(func() []string {
	tags := make([]string, hashSlots)
	for i, left := int64(0), hashSlots; left > 0; i++ {
		t := strconv.FormatInt(i, 36)
		if s := hashSlot(t); tags[s] == "" {
			tags[s] = t
			left--
		}
	}
	return tags
})

// slotTag is a tag whose hash slot is s.
func slotTag(s uint16) string { return slotTags()[s] }

// validTag reports whether Redis Cluster hashes {tag} by tag: it must be
// non-empty and hold no '}'.
func validTag(tag string) bool { return tag != "" && !strings.Contains(tag, "}") }
