package actors

import (
	"context"
	"time"

	"github.com/vatactor/vatactor/conn"
)

// Snapshot is a live view of a vat: each of its connections as
// conn.Conn.Inspect sees it, oldest first.
type Snapshot struct {
	Name  string          `json:"name"`
	Taken time.Time       `json:"taken"`
	Conns []conn.Snapshot `json:"connections"`
}

// Inspect takes a snapshot of every connection of the vat that has not
// ended (each one by its own actor, so each is consistent in itself). A
// connection that ends meanwhile is reported closed, with its reason.
func (v *Vat) Inspect(ctx context.Context) (Snapshot, error) {
	snap := Snapshot{Name: v.opts.Name, Taken: time.Now(), Conns: []conn.Snapshot{}}
	for _, c := range v.Conns() {
		cs, err := c.Inspect(ctx)
		if err != nil {
			return Snapshot{}, err
		}
		snap.Conns = append(snap.Conns, cs)
	}
	return snap, nil
}
