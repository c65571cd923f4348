package mailbox

import "testing"

// TestQueueTrim: an emptied queue gives back what a burst grew it to and
// goes on in order; a queue with messages left keeps them.
func TestQueueTrim(t *testing.T) {
	m := Init(&Mailbox{})
	for i := range 1000 {
		m.user.push(i)
	}
	m.user.trim() // not empty: kept
	if m.user.len() != 1000 {
		t.Fatalf("trim of a full queue left %d messages", m.user.len())
	}
	for i := range 1000 {
		if v, ok := m.user.pop(); !ok || v != i {
			t.Fatalf("pop %d: %v %v", i, v, ok)
		}
	}
	m.Trim()
	if c := cap(m.user.items); c > len(m.user.inline) {
		t.Fatalf("an emptied queue keeps storage for %d messages", c)
	}
	m.user.push("a")
	m.user.push("b")
	m.user.push("c")
	for _, want := range []string{"a", "b", "c"} {
		if v, _ := m.user.pop(); v != want {
			t.Fatalf("after trim: got %v, want %s", v, want)
		}
	}
}
