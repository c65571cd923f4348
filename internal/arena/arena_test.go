package arena

import "testing"

// Pointers stay valid and unchanged while the storage grows, and a warm
// round allocates nothing.
func TestPutResetReuse(t *testing.T) {
	var a Of[[4]int]
	var ps []*[4]int
	for i := range 100 {
		ps = append(ps, a.Put([4]int{i, i, i, i}))
	}
	for i, p := range ps {
		if *p != [4]int{i, i, i, i} {
			t.Fatalf("value %d became %v as the storage grew", i, *p)
		}
	}
	a.Reset()
	if n := testing.AllocsPerRun(100, func() {
		for i := range 100 {
			a.Put([4]int{i})
		}
		a.Reset()
	}); n != 0 {
		t.Errorf("a warm round allocates %v times", n)
	}
}

// TestClearDropsEverything: after Clear nothing of any earlier round is
// left in the storage, however the rounds were sized.
func TestClearDropsEverything(t *testing.T) {
	var a Of[*int]
	for _, round := range []int{5, 2, 9, 1, 0, 3} {
		for range round {
			a.Put(new(int))
		}
		a.Reset()
		for range round / 2 {
			a.Put(new(int))
		}
		a.Clear()
		for i, p := range a.buf {
			if p != nil {
				t.Fatalf("after a round of %d, slot %d keeps a value", round, i)
			}
		}
	}
}
