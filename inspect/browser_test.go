package inspect_test

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/vatactor/vatactor/supervisor"
)

// chromium finds Debian's Chromium; without it the browser test is
// skipped, unless VATACTOR_REQUIRE_CHROMIUM is set (CI).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("VATACTOR_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("VATACTOR_REQUIRE_CHROMIUM") != "" {
		t.Fatal("no Chromium found (VATACTOR_REQUIRE_CHROMIUM is set): apt-get install chromium")
	}
	t.Skip("skipping: no Chromium; install Debian's chromium (apt-get install chromium) or set VATACTOR_CHROMIUM")
	return ""
}

// browser starts a headless Chromium for the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // as root in CI
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancelTimeout)
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting Chromium: %v", err)
	}
	return ctx
}

// TestPagesInABrowser opens the live view in headless Chromium: a
// connection appears in the open list without a reload, its page shows
// its call in flight and its budget, and the connection goes away from
// the list, again without a reload, once it has ended.
func TestPagesInABrowser(t *testing.T) {
	ctx := browser(t)
	f := newFixture(t)
	base := f.web.URL + "/debug/vat/"

	if err := chromedp.Do(ctx, chromedp.Navigate(base), chromedp.WaitVisible(chromedp.ID("no-conns"))); err != nil {
		t.Fatalf("the empty list: %v", err)
	}

	cn, release := f.dial(t)
	row := chromedp.CSS("tr.conn")
	if err := chromedp.Do(ctx, chromedp.WaitVisible(row)); err != nil { // the page refreshed itself
		t.Fatalf("the connection never appeared in the open list: %v", err)
	}
	text, err := chromedp.Run(ctx, chromedp.Text(row))
	if err != nil || !strings.Contains(text, "127.0.0.1:") || !strings.Contains(text, "server") || !strings.Contains(text, "open") {
		t.Errorf("the list's row: %q (%v)", text, err)
	}
	id, err := chromedp.Run(ctx, chromedp.AttributeValue(row, "data-id"))
	if err != nil || !id.Exists {
		t.Fatalf("the row's id: %v", err)
	}

	wait := chromedp.CSS(`tr.answer[data-method="Echo.wait"]`)
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("tr.conn a")), chromedp.WaitVisible(wait)); err != nil {
		t.Fatalf("the connection's page: %v", err)
	}
	answer, _ := chromedp.Run(ctx, chromedp.Text(wait))
	state, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("state")))
	budget, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("budget")))
	if state != "open" || !strings.Contains(answer, "running") || !strings.Contains(budget, "calls running") {
		t.Errorf("the connection's page: state %q, answer %q, budget %q", state, answer, budget)
	}
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if u, perr := url.Parse(loc); err != nil || perr != nil || u.Query().Get("id") != id.Value {
		t.Errorf("the link went to %q (%v), want the page of %s", loc, err, id.Value)
	}

	if err := chromedp.Do(ctx, chromedp.NavigateBack(), chromedp.WaitVisible(row)); err != nil {
		t.Fatalf("back to the list: %v", err)
	}
	release()
	if _, err := cn.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.OK}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.ID("no-conns"))); err != nil {
		t.Fatalf("the ended connection never left the open list: %v", err)
	}
}
