package conn

import (
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// parker holds the readers of rested connections without a goroutine each:
// a rested connection's socket is registered, one-shot, with one epoll
// instance of the process, and one goroutine (poll) waits on it for all of
// them. When a socket becomes readable (the peer's next frame, its FIN, an
// error) that goroutine starts the connection's reader again, which reads
// as it always does (the socket's own wait, in Go's poller, is untouched).
// A parked connection costs a map entry and the kernel's registration, no
// goroutine and no stack: the runtime may start goroutines with 4 or 8 KiB
// stacks (it sizes new stacks by the average in use), and a goroutine
// waiting in a read cannot be shrunk below 4 KiB.
//
// The registry is keyed by the connection's address (the epoll event's
// data): a stale event, for a connection that has left it, is dropped, or
// wakes another connection that came to be at the same address, whose
// reader then waits in its read as a reader that has not rested does.
type parker struct {
	mu     sync.Mutex
	opened bool // the epoll instance was made, or could not be
	broken bool // no epoll (it could not be made, or failed): the readers rest on goroutines
	epfd   int
	wakefd int // an eventfd that stops poll when the registry empties
	conns  map[uintptr]*Conn
	poll   bool // a poll goroutine runs
}

var readers parker

func connKey(c *Conn) uintptr { return uintptr(unsafe.Pointer(c)) }

// park registers c's socket and leaves its reader to poll; it reports
// false when it cannot (no socket, or no epoll: c's reader rests on a
// goroutine of its own then). The caller has counted the reader in
// c.reader, which stays counted while it is parked.
func (p *parker) park(c *Conn, raw syscall.RawConn) bool {
	if raw == nil {
		return false
	}
	p.mu.Lock()
	if !p.opened {
		p.opened = true
		p.open()
	}
	if p.broken {
		p.mu.Unlock()
		return false
	}
	key := connKey(c)
	p.conns[key] = c
	start := !p.poll
	p.poll = true
	epfd := p.epfd
	p.mu.Unlock()
	if start {
		go p.run()
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
	*(*uintptr)(unsafe.Pointer(&ev.Fd)) = key // Fd and Pad are the event's 64-bit data
	var err error
	cerr := raw.Control(func(fd uintptr) {
		// Registered before (a one-shot registration stays, disarmed):
		// armed again; else added.
		if err = unix.EpollCtl(epfd, unix.EPOLL_CTL_MOD, int(fd), &ev); err == unix.ENOENT {
			err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if cerr != nil || err != nil {
		// Closed meanwhile, or not a socket epoll takes: the reader goes
		// on, unless poll has already woken it.
		p.wake(key)
	}
	return true
}

// open makes the epoll instance and the eventfd, with p.mu held.
func (p *parker) open() {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		p.broken = true
		return
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err == nil {
		if err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
			_ = unix.Close(wakefd)
		}
	}
	if err != nil {
		_ = unix.Close(epfd)
		p.broken = true
		return
	}
	p.epfd, p.wakefd, p.conns = epfd, wakefd, make(map[uintptr]*Conn)
}

// unpark wakes c's reader if it is parked: c's socket is closed, so no
// event will come for it. Its read then fails as a resting reader's does.
func (p *parker) unpark(c *Conn) { p.wake(connKey(c)) }

// wake takes the connection at key out of the registry, if it is there,
// and starts its reader. When that empties the registry, poll is told to
// stop (it sees so itself after its own wakes: take).
func (p *parker) wake(key uintptr) {
	if empty := p.take(key); empty {
		var one [8]byte
		one[0] = 1
		_, _ = unix.Write(p.wakefd, one[:])
	}
}

// take takes the connection at key out of the registry, if it is there,
// starts its reader, and reports whether the registry is now empty with
// poll running.
func (p *parker) take(key uintptr) (empty bool) {
	p.mu.Lock()
	c := p.conns[key]
	if c != nil {
		delete(p.conns, key)
	}
	empty = len(p.conns) == 0 && p.poll
	p.mu.Unlock()
	if c != nil {
		go c.readLoop()
	}
	return empty
}

// run is the poll goroutine: it waits for the parked sockets and wakes
// their readers, until the registry is empty.
func (p *parker) run() {
	var events [64]unix.EpollEvent
	for {
		n, err := unix.EpollWait(p.epfd, events[:], -1)
		if err != nil && err != unix.EINTR {
			p.failed()
			return
		}
		for _, ev := range events[:max(n, 0)] {
			key := *(*uintptr)(unsafe.Pointer(&ev.Fd))
			if key == 0 { // the eventfd: drained; the check below decides
				var buf [8]byte
				_, _ = unix.Read(p.wakefd, buf[:])
				continue
			}
			p.take(key)
		}
		p.mu.Lock()
		if len(p.conns) == 0 {
			p.poll = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
}

// failed: epoll_wait failed, which it does not on a valid instance. Every
// parked reader is woken and readers rest on goroutines from now on.
func (p *parker) failed() {
	p.mu.Lock()
	keys := make([]uintptr, 0, len(p.conns))
	for k := range p.conns {
		keys = append(keys, k)
	}
	p.broken = true
	p.mu.Unlock()
	for _, k := range keys {
		p.take(k) // on the poll goroutine, which stops: nothing to tell it
	}
	p.mu.Lock()
	p.poll = false
	p.mu.Unlock()
}

// parked is how many readers are parked.
func (p *parker) parked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}
