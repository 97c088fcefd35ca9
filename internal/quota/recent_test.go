package quota

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

// TestRedisRecent: a settle records its reservation's marks in the recent
// set of its slot, scored by when it settled, in the same script as the
// charge; a release (nothing charged) records none; Recent reads those
// settled since a time; a mark older than three leases and ten seconds
// is dropped by the next settle in its slot.
func TestRedisRecent(t *testing.T) {
	addr, _ := redisserver.Start(t)
	testRecent(t, newRedisClient(t, addr), false)
}

func testRecent(t *testing.T, client redis.UniversalClient, cluster bool) {
	ctx := context.Background()
	clock := newFakeClock(t0)
	r := seeded(t, NewRedis(client, RedisOptions{Prefix: "recent:", Now: clock.Now, Lease: 10 * time.Second, Cluster: cluster}))
	limits := []Limit{{Window: day, Tokens: ptr(1_000_000)}}
	alice := UserBudget("team", "alice", "ua", limits, false)
	bob := UserBudget("team", "bob", "ub", limits, false)
	carol := UserBudget("team", "carol", "uc", limits, false)
	spend := func(b Budget, actual Amount, marks ...string) {
		t.Helper()
		res := admit(t, r, []Budget{b}, amt(1, 10, 10))
		res.Marks = marks
		settle(t, r, res, actual)
	}
	check := func(since time.Time, want map[string]time.Time) {
		t.Helper()
		got, err := r.Recent(ctx, since)
		if err != nil {
			t.Fatal(err)
		}
		if !maps.EqualFunc(got, want, time.Time.Equal) {
			t.Errorf("Recent(%s) = %v, want %v", since.Format(time.RFC3339Nano), got, want)
		}
	}

	spend(alice, amt(1, 10, 4), "0/team/alice/ua")
	clock.Step(2 * time.Second)
	spend(bob, amt(1, 7, 3), "0/team/bob/ub", "1/team/pool/qp")
	clock.Step(time.Second)
	spend(alice, amt(1, 5, 5), "0/team/alice/ua")
	spend(carol, Amount{}, "0/team/carol/uc") // released: nothing charged

	check(t0, map[string]time.Time{
		"0/team/alice/ua": utc("2027-03-10T12:30:18Z"),
		"0/team/bob/ub":   utc("2027-03-10T12:30:17Z"),
		"1/team/pool/qp":  utc("2027-03-10T12:30:17Z"),
	})
	check(utc("2027-03-10T12:30:17.5Z"), map[string]time.Time{"0/team/alice/ua": utc("2027-03-10T12:30:18Z")})
	check(utc("2027-03-10T12:30:19Z"), map[string]time.Time{})

	// 41 s later alice's mark of 12:30:18 is past the 40 s kept: her next
	// settle drops it from her slot's set and adds the new one.
	clock.Step(41 * time.Second)
	spend(alice, amt(1, 1, 1), "0/team/alice/ua")
	members, err := client.ZRangeWithScores(ctx, r.recent(TagOf(alice)), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, z := range members {
		got = append(got, fmt.Sprintf("%v@%.0f", z.Member, z.Score))
	}
	// On one instance the one set held bob's marks of 12:30:17 too: they
	// are dropped as well. On a cluster his are in another slot's set.
	if want := fmt.Sprintf("[0/team/alice/ua@%d]", utc("2027-03-10T12:30:59Z").UnixMilli()); fmt.Sprint(got) != want {
		t.Errorf("alice's slot's recent set after 41 s: %v, want %s", got, want)
	}
}
