package conn

import (
	"context"
	"crypto/tls"
	"net"
)

// PeerInfo is what is known of a connection's peer: its address and,
// over TLS, the state of the session (the peer's verified certificate
// chains among it).
type PeerInfo struct {
	Addr net.Addr
	TLS  *tls.ConnectionState // nil: not TLS
}

// PeerInfoOf is what nc tells of its peer; a *tls.Conn's handshake must
// be done.
func PeerInfoOf(nc net.Conn) *PeerInfo {
	p := &PeerInfo{Addr: nc.RemoteAddr()}
	if tc, ok := nc.(*tls.Conn); ok {
		st := tc.ConnectionState()
		p.TLS = &st
	}
	return p
}

type peerKey struct{}

// PeerFromContext returns the peer of the connection a call came from:
// the context of every call a capability serves for a peer has it
// (Options.Peer… set by the vat).
func PeerFromContext(ctx context.Context) (*PeerInfo, bool) {
	p, ok := ctx.Value(peerKey{}).(*PeerInfo)
	return p, ok && p != nil
}
