package proxy

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The data path. A forwarded connection's two sockets leave Go's netpoller
// and join an epoll loop of the proxy's own: each loop waits for every
// socket it holds in one epoll_wait and moves what arrived with one read
// and one write, as an event-driven proxy does. Two goroutines per
// connection blocked in io.Copy cost a scheduler round (netpoll, wake,
// park) for every message of a short request and its answer, which is
// most of what a proxy for small queries spends besides the syscalls
// themselves; a loop that finds several sockets ready at once pays it
// once for all of them. Reads go into the loop's one scratch buffer and
// are written on at once, so an idle connection holds no buffer: only the
// bytes a slow reader has not taken yet are kept, and the socket they
// came from is not read again until they are written.

// scratchSize is what one read takes at most: large results move in
// 64 KiB steps, the size of a loopback socket's usual receive queue.
const scratchSize = 64 << 10

// loop is one epoll instance and the goroutine that serves it.
type loop struct {
	epfd    int
	wake    int // eventfd: close's way to interrupt epoll_wait
	scratch []byte

	mu    sync.Mutex
	socks map[int32]*sock // by fd, for the events epoll returns
	stop  bool
}

// pipe is one connection in a loop: the client's socket and the backend's.
// Its state is the loop's alone, except closed, which shut reads under mu.
type pipe struct {
	lp      *loop
	client  *sock
	backend *sock
	done    chan struct{} // closed when the loop has closed both sockets

	mu     sync.Mutex
	closed bool

	dead  bool     // the loop's alone: set once it decided to close the pipe
	stats []*Stats // where the bytes that pass are counted
}

// sock is one side of a pipe.
type sock struct {
	fd      int
	p       *pipe
	peer    *sock
	pending []byte // read from peer, not yet written here
	events  uint32 // what epoll watches for now
}

// newLoop makes an epoll instance and starts serving it.
func newLoop() (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	lp := &loop{epfd: epfd, wake: wake, scratch: make([]byte, scratchSize), socks: map[int32]*sock{}}
	go lp.run()
	return lp, nil
}

// detach takes c's socket out of Go's netpoller: the returned descriptor
// (non-blocking, close-on-exec) is the caller's, and c is closed.
func detach(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	// The duplicate shares the open file and so its O_NONBLOCK; closing c
	// takes the original out of the runtime's epoll.
	c.Close()
	return fd, nil
}

// add starts moving bytes between client and backend, both detached, and
// returns the pipe, whose done closes once either side has closed or failed
// and both are closed. On an error both descriptors are closed.
func (lp *loop) add(client, backend int, stats ...*Stats) (*pipe, error) {
	p := &pipe{lp: lp, done: make(chan struct{}), stats: stats}
	p.client = &sock{fd: client, p: p, events: readable}
	p.backend = &sock{fd: backend, p: p, events: readable}
	p.client.peer, p.backend.peer = p.backend, p.client
	// Under mu, so that the loop cannot stop and close epfd meanwhile.
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.stop {
		p.release()
		return nil, errors.New("proxy closed")
	}
	ev := unix.EpollEvent{Events: readable, Fd: int32(client)}
	if err := unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, client, &ev); err != nil {
		p.release()
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	lp.socks[int32(client)] = p.client
	lp.socks[int32(backend)] = p.backend
	ev = unix.EpollEvent{Events: readable, Fd: int32(backend)}
	if err := unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, backend, &ev); err != nil {
		// The loop may be serving the client's socket already: only it
		// closes descriptors it watches. Shutting the client down makes
		// it end the pipe.
		unix.Shutdown(client, unix.SHUT_RDWR)
		return p, nil
	}
	return p, nil
}

// readable is what epoll watches a socket for while its bytes may be read.
const readable = unix.EPOLLIN | unix.EPOLLRDHUP

// shut ends the pipe from any goroutine: both sockets are shut down, which
// the loop sees as an end of stream and answers by closing them. It never
// closes a descriptor itself, so it cannot close another connection's that
// took the number.
func (p *pipe) shut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	unix.Shutdown(p.client.fd, unix.SHUT_RDWR)
	unix.Shutdown(p.backend.fd, unix.SHUT_RDWR)
}

// release closes both descriptors, once.
func (p *pipe) release() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	unix.Close(p.client.fd)
	unix.Close(p.backend.fd)
	p.mu.Unlock()
	close(p.done)
}

// close stops the loop; pipes still in it are closed.
func (lp *loop) close() {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.stop {
		return
	}
	lp.stop = true
	// Under mu: the loop closes wake, under mu too, only once it has seen
	// stop, so this cannot write to a descriptor that took its number.
	unix.Write(lp.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
}

func (lp *loop) run() {
	events := make([]unix.EpollEvent, 128)
	var ended []*pipe
	for {
		n, err := unix.EpollWait(lp.epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			// Only a bad epfd or events buffer fail here: neither happens
			// while the loop runs.
			panic(fmt.Sprintf("proxy: epoll_wait: %v", err))
		}
		lp.mu.Lock()
		stop := lp.stop
		lp.mu.Unlock()
		if stop {
			lp.shutdown()
			return
		}
		for i := 0; i < n; i++ {
			ev := events[i]
			if int(ev.Fd) == lp.wake {
				var b [8]byte
				unix.Read(lp.wake, b[:])
				continue
			}
			lp.mu.Lock()
			s := lp.socks[ev.Fd]
			lp.mu.Unlock()
			if s == nil || s.p.dead {
				continue
			}
			if !lp.serve(s, ev.Events) {
				s.p.dead = true
				ended = append(ended, s.p)
			}
		}
		// Descriptors close only after the batch, so that no event of this
		// batch can name a number a new connection has taken meanwhile.
		for _, p := range ended {
			lp.drop(p)
		}
		ended = ended[:0]
	}
}

// drop takes p's sockets out of the loop and closes them.
func (lp *loop) drop(p *pipe) {
	lp.mu.Lock()
	delete(lp.socks, int32(p.client.fd))
	delete(lp.socks, int32(p.backend.fd))
	lp.mu.Unlock()
	unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, p.client.fd, nil)
	unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, p.backend.fd, nil)
	p.release()
}

// shutdown closes every pipe when the loop stops.
func (lp *loop) shutdown() {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	for fd, s := range lp.socks {
		delete(lp.socks, fd)
		s.p.release()
	}
	unix.Close(lp.epfd)
	unix.Close(lp.wake)
}

// serve handles one socket's events and reports whether its pipe lives on.
func (lp *loop) serve(s *sock, events uint32) bool {
	if events&unix.EPOLLOUT != 0 && len(s.pending) > 0 {
		if !s.flush() {
			return false
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 && s.events&unix.EPOLLIN != 0 {
		return lp.pass(s)
	}
	if events&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		// Reset or shut down both ways while this side waits for its peer
		// to take what it sent: nothing more can pass.
		return false
	}
	return true
}

// pass reads what s has and writes it to its peer, and reports whether the
// pipe lives on. The client may end its side first and still read the
// answer: its end of stream is passed on to the backend, which then closes
// (Postgres ends the session). The backend's end of stream ends the pipe,
// once what it sent before has been written to the client (reading stops
// while any is unwritten), so its last words, a FATAL before it closes,
// arrive. Errors on either side end it at once.
func (lp *loop) pass(s *sock) bool {
	n, err := unix.Read(s.fd, lp.scratch)
	if err == unix.EAGAIN || err == unix.EINTR {
		return true
	}
	if err != nil {
		return false
	}
	if n == 0 {
		if s != s.p.client {
			return false
		}
		// Nothing the client sent is waiting: reading it stops while any is.
		return lp.watch(s, s.events&^readable) && unix.Shutdown(s.peer.fd, unix.SHUT_WR) == nil
	}
	s.p.count(s, n)
	w, err := unix.Write(s.peer.fd, lp.scratch[:n])
	if err == unix.EAGAIN || err == unix.EINTR {
		w, err = 0, nil
	}
	if err != nil {
		return false
	}
	if w < n {
		// The peer's send queue is full: keep the rest, stop reading s
		// until it is written.
		s.peer.pending = append(s.peer.pending[:0], lp.scratch[w:n]...)
		if !lp.watch(s, s.events&^readable) || !lp.watch(s.peer, s.peer.events|unix.EPOLLOUT) {
			return false
		}
	}
	return true
}

// flush writes what s's peer sent and s could not take, and reads the peer
// again once it is all written.
func (s *sock) flush() bool {
	w, err := unix.Write(s.fd, s.pending)
	if err == unix.EAGAIN || err == unix.EINTR {
		return true
	}
	if err != nil {
		return false
	}
	s.pending = s.pending[w:]
	if len(s.pending) > 0 {
		return true
	}
	s.pending = nil
	lp := s.p.lp
	return lp.watch(s, s.events&^unix.EPOLLOUT) && lp.watch(s.peer, s.peer.events|readable)
}

// watch changes what epoll reports for s. A socket with nothing to wait
// for leaves the epoll set: epoll reports a hang-up whatever the mask, and
// one that comes while s is not read (its peer has not taken what s sent)
// must not end the pipe before the bytes still queued in s are read.
func (lp *loop) watch(s *sock, events uint32) bool {
	if events == s.events {
		return true
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(s.fd)}
	var err error
	switch {
	case events == 0:
		err = unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
	case s.events == 0:
		err = unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev)
	default:
		err = unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_MOD, s.fd, &ev)
	}
	if err != nil {
		return false
	}
	s.events = events
	return true
}

// count adds n bytes read from s to the pipe's counters.
func (p *pipe) count(s *sock, n int) {
	for _, st := range p.stats {
		if s == p.client {
			st.ReceivedBytes.Add(int64(n))
		} else {
			st.SentBytes.Add(int64(n))
		}
	}
}

// loops spreads pipes over a few epoll loops (loopCount), started on
// first use.
type loops struct {
	mu     sync.Mutex
	all    []*loop
	next   atomic.Uint32
	max    int
	closed bool
}

func (ls *loops) pick() (*loop, error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.closed {
		return nil, errors.New("proxy closed")
	}
	i := int(ls.next.Add(1)) % ls.max
	for len(ls.all) <= i {
		lp, err := newLoop()
		if err != nil {
			return nil, err
		}
		ls.all = append(ls.all, lp)
	}
	return ls.all[i], nil
}

func (ls *loops) close() {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.closed = true
	for _, lp := range ls.all {
		lp.close()
	}
	ls.all = nil
}

// loopCount is how many loops a proxy runs: one for every 4 cores Go uses,
// at most 4. One loop moves tens of thousands of small messages a second
// on one core; more loops than that find fewer sockets ready per wait, and
// on a small machine the proxy shares its cores with Postgres and the
// clients anyway.
func loopCount() int {
	return min(max((runtime.GOMAXPROCS(0)+3)/4, 1), 4)
}
