package core

// Tables is a copy of a connection's tables, for checks and debugging:
// the ids in each, with the reference counts the wire has agreed on.
type Tables struct {
	Questions []uint32          // our questions not retired
	Answers   []uint32          // the peer's questions not dropped
	Exports   map[uint32]uint32 // export id → references the peer holds
	Imports   map[uint32]uint32 // import id → references the peer gave us
	Embargoes int
	Retired   int // answers gone from the wire whose results CapAnswer caps still name
}

// Tables returns a copy of the connection's tables.
func (c *Core) Tables() Tables {
	t := Tables{Exports: map[uint32]uint32{}, Imports: map[uint32]uint32{}, Embargoes: c.embargoes.Len(), Retired: len(c.retired)}
	c.questions.Each(func(id uint32, _ *question) { t.Questions = append(t.Questions, id) })
	for id := range c.answers.All() {
		t.Answers = append(t.Answers, id)
	}
	c.exports.Each(func(id uint32, e *export) { t.Exports[id] = e.wireRefs })
	for id, im := range c.imports {
		t.Imports[id] = im.wireRefs
	}
	return t
}
