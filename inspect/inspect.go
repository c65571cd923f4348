// Package inspect serves a live view of a vat over HTTP, in the manner of
// net/http/pprof and grpc's channelz: a page listing the vat's
// connections, a page per connection with its tables (questions, answers,
// exports, imports, embargoes), its flow windows and its budget, both
// refreshed live in the browser, and the same snapshots as JSON.
//
// Mount it on a debug port, not on a public one (it names peers and
// methods):
//
//	mux := http.NewServeMux()
//	mux.Handle("/debug/vat/", http.StripPrefix("/debug/vat", inspect.Handler(vat)))
//
// Under that prefix:
//
//	/                  the list of connections (HTML)
//	/?format=json      actors.Snapshot as JSON
//	/conn?id=ID        one connection (HTML)
//	/conn?id=ID&format=json  conn.Snapshot as JSON (404 once it has ended)
//
// The pages fetch themselves again every RefreshInterval (the part below
// the title, with fragment=1) and swap it in, so they stay current
// without a reload and work without a script as plain pages.
package inspect

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"time"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
)

// RefreshInterval is how often an open page fetches itself again.
const RefreshInterval = time.Second

// snapshotTimeout bounds the taking of one snapshot.
const snapshotTimeout = 5 * time.Second

//go:embed templates/*.html
var templateFiles embed.FS

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"age":     formatAge,
	"bytes":   formatBytes,
	"refresh": func() int64 { return RefreshInterval.Milliseconds() },
}).ParseFS(templateFiles, "templates/*.html"))

// Handler returns the handler of v's live view.
func Handler(v *actors.Vat) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), snapshotTimeout)
		defer cancel()
		snap, err := v.Inspect(ctx)
		if err != nil {
			http.Error(w, fmt.Sprintf("inspecting vat %s: %v", v.PID().Id, err), http.StatusServiceUnavailable)
			return
		}
		respond(w, r, "vat", snap)
	})
	mux.HandleFunc("GET /conn", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		ctx, cancel := context.WithTimeout(r.Context(), snapshotTimeout)
		defer cancel()
		page := connPage{ID: id}
		for _, c := range v.Conns() {
			if pid := c.PID(); pid == nil || pid.Id != id {
				continue
			}
			snap, err := c.Inspect(ctx)
			if err != nil {
				http.Error(w, fmt.Sprintf("inspecting connection %s: %v", id, err), http.StatusServiceUnavailable)
				return
			}
			page.Conn = &snap
		}
		if page.Conn == nil && wantsJSON(r) {
			http.Error(w, fmt.Sprintf("no connection %q: it has ended, or never was", id), http.StatusNotFound)
			return
		}
		if wantsJSON(r) {
			respond(w, r, "", page.Conn)
			return
		}
		respond(w, r, "conn", page)
	})
	return mux
}

// connPage is what the connection page shows: the connection, or that it
// is gone.
type connPage struct {
	ID   string
	Conn *conn.Snapshot
}

func wantsJSON(r *http.Request) bool { return r.URL.Query().Get("format") == "json" }

// respond writes data as JSON when asked, else as the page (or, with
// fragment=1, the part of it a refresh swaps in).
func respond(w http.ResponseWriter, r *http.Request, page string, data any) {
	w.Header().Set("Cache-Control", "no-store")
	if wantsJSON(r) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(data)
		return
	}
	name := page + ".html"
	if r.URL.Query().Get("fragment") == "1" {
		name = page + "-live"
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pages.ExecuteTemplate(w, name, data); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

// formatAge shows a duration to the millisecond (to the second past a
// minute).
func formatAge(d time.Duration) string {
	if d >= time.Minute {
		return d.Round(time.Second).String()
	}
	return d.Round(time.Millisecond).String()
}

// formatBytes shows a byte count in B, KiB or MiB.
func formatBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d B", n)
	}
}
