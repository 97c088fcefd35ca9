package proxy

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

var (
	errTooLarge   = errors.New("request body too large")
	errBusy       = errors.New("request body memory exhausted")
	errBodyClosed = errors.New("read of a closed request body")
)

// memBudget bounds the request-body memory held by all requests at once,
// so that many large bodies arriving together, or slowly, cannot take the
// process past its memory limit: a body that would go past it is refused.
type memBudget struct {
	limit int64
	used  atomic.Int64
}

// MinBodyMemory is the least MaxBodyMemory that serves one request whose
// body has maxBody bytes: the body and its edited copy, with room for the
// edits.
func MinBodyMemory(maxBody int64) int64 { return 2*maxBody + 64<<10 }

func (m *memBudget) take(n int64) bool {
	for {
		u := m.used.Load()
		if u+n > m.limit {
			return false
		}
		if m.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

func (m *memBudget) give(n int64) { m.used.Add(-n) }

// memLease takes body memory from the process's budget and from the user's
// share of it, so that one user cannot take all of it and refuse everyone
// else's requests.
type memLease struct{ all, user *memBudget }

func (m memLease) take(n int64) bool {
	if m.user != nil && !m.user.take(n) {
		return false
	}
	if !m.all.take(n) {
		if m.user != nil {
			m.user.give(n)
		}
		return false
	}
	return true
}

func (m memLease) give(n int64) {
	m.all.give(n)
	if m.user != nil {
		m.user.give(n)
	}
}

// bodyMemory is the process's body memory budget and each user's share.
type bodyMemory struct {
	all       memBudget
	perUser   int64
	userShare sync.Map // user key → *memBudget
}

// lease is what a request of user key (or of no user, "") draws on.
func (b *bodyMemory) lease(key string) memLease {
	if key == "" {
		return memLease{all: &b.all}
	}
	v, ok := b.userShare.Load(key)
	if !ok {
		v, _ = b.userShare.LoadOrStore(key, &memBudget{limit: b.perUser})
	}
	return memLease{all: &b.all, user: v.(*memBudget)}
}

// bodyBuf holds a request body. The transport may still be writing the body
// after RoundTrip returns, so the buffer goes back to the pool only when
// both the handler and every reader the transport got are done with it.
type bodyBuf struct {
	b, edited []byte
	refs      atomic.Int32
	mem       memLease
	// held is the memory taken from mem for b and edited.
	held int64
}

// bodyInitial is the buffer every body starts in; nearly every API request
// fits, and only buffers of this size are pooled, so that a body holds
// exactly what it grew to.
const bodyInitial = 8 << 10

var bodyPool = sync.Pool{New: func() any { return &bodyBuf{b: make([]byte, 0, bodyInitial)} }}

// getBodyBuf takes a buffer from the pool, and its capacity from mem.
func getBodyBuf(mem memLease) (*bodyBuf, bool) {
	if !mem.take(bodyInitial) {
		return nil, false
	}
	bb := bodyPool.Get().(*bodyBuf)
	bb.refs.Store(1)
	bb.mem, bb.held = mem, bodyInitial
	return bb, true
}

func (bb *bodyBuf) release() {
	if bb.refs.Add(-1) != 0 {
		return
	}
	bb.mem.give(bb.held)
	bb.held = 0
	if cap(bb.b) != bodyInitial {
		return // a grown buffer goes, so that the next body starts small
	}
	bb.b, bb.edited = bb.b[:0], nil
	bodyPool.Put(bb)
}

// grow makes room for at least n more bytes in *buf, taking the memory from
// the budget first. Capacity doubles, so a body arrives in a few copies,
// and never goes past what has arrived by more than the doubling: a client
// that declares a large Content-Length and sends a byte holds 8 KiB.
func (bb *bodyBuf) grow(buf *[]byte, n, limit int) error {
	b := *buf
	if cap(b)-len(b) >= n {
		return nil
	}
	size := max(2*cap(b), len(b)+n, bodyInitial)
	size = min(size, limit)
	if size < len(b)+n {
		return errTooLarge
	}
	more := int64(size - cap(b))
	if !bb.mem.take(more) {
		return errBusy
	}
	bb.held += more
	nb := make([]byte, len(b), size)
	copy(nb, b)
	*buf = nb
	return nil
}

// readFrom reads the whole body into bb.b, failing with errTooLarge past
// limit bytes and errBusy when the memory budget is spent.
func (bb *bodyBuf) readFrom(r io.Reader, limit int64) error {
	// One byte past the limit tells a body at the limit from one above it.
	capacity := int(min(limit, 1<<40)) + 1
	for {
		if len(bb.b) == cap(bb.b) {
			if err := bb.grow(&bb.b, 1, capacity); err != nil {
				return err
			}
		}
		n, err := r.Read(bb.b[len(bb.b):cap(bb.b)])
		bb.b = bb.b[:len(bb.b)+n]
		if int64(len(bb.b)) > limit {
			return errTooLarge
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// edit writes the body with the splices applied into bb.edited and
// returns it.
func (bb *bodyBuf) edit(sp []splice) ([]byte, error) {
	extra := 0
	for _, s := range sp {
		extra += len(s.text)
	}
	bb.edited = bb.edited[:0]
	if err := bb.grow(&bb.edited, len(bb.b)+extra, len(bb.b)+extra); err != nil {
		return nil, err
	}
	bb.edited = applySplices(bb.edited, bb.b, sp)
	return bb.edited, nil
}

// bodyReader is one reading of a bodyBuf handed to the transport.
type bodyReader struct {
	data   []byte
	off    int
	bb     *bodyBuf
	closed atomic.Bool
}

func (bb *bodyBuf) reader(data []byte) *bodyReader {
	bb.refs.Add(1)
	return &bodyReader{data: data, bb: bb}
}

func (br *bodyReader) Read(p []byte) (int, error) {
	if br.closed.Load() {
		return 0, errBodyClosed
	}
	if br.off >= len(br.data) {
		return 0, io.EOF
	}
	n := copy(p, br.data[br.off:])
	br.off += n
	return n, nil
}

func (br *bodyReader) Close() error {
	if br.closed.CompareAndSwap(false, true) {
		br.bb.release()
	}
	return nil
}
