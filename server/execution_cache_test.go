package server

import (
	"container/list"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/decisionlog"
)

// listCache is the decision cache as it was before its slots: a container/list LRU of record
// copies. TestDecisionCacheMatchesListLRU holds the slot cache to it.
type listCache struct {
	max   int
	order *list.List
	byID  map[string]*list.Element
}

func (c *listCache) put(r *decisionlog.Record) {
	if c.max <= 0 || r.Schema != decisionlog.SchemaDecisionV1 {
		return
	}
	kept := *r
	if e, ok := c.byID[r.DecisionID]; ok {
		e.Value = &kept
		c.order.MoveToFront(e)
		return
	}
	c.byID[r.DecisionID] = c.order.PushFront(&kept)
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byID, last.Value.(*decisionlog.Record).DecisionID)
	}
}

func (c *listCache) get(id string) *decisionlog.Record {
	e, ok := c.byID[id]
	if !ok {
		return nil
	}
	c.order.MoveToFront(e)
	r := *e.Value.(*decisionlog.Record)
	return &r
}

// TestDecisionCacheMatchesListLRU: over random puts (new IDs, repeated IDs, executions, which are
// not kept) and gets, the slot cache finds exactly what the list LRU finds, with the same
// contents, for several bounds.
func TestDecisionCacheMatchesListLRU(t *testing.T) {
	for _, max := range []int{0, 1, 2, 3, 8, 33} {
		t.Run("max="+strconv.Itoa(max), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(max), 7))
			got := newDecisionCache(max)
			want := &listCache{max: max, order: list.New(), byID: map[string]*list.Element{}}
			for step := range 5000 {
				id := "d-" + strconv.Itoa(rng.IntN(3*max+5))
				switch op := rng.IntN(10); {
				case op < 5:
					r := &decisionlog.Record{Schema: decisionlog.SchemaDecisionV1, DecisionID: id, Allow: rng.IntN(2) == 0, EvalNS: int64(step)}
					if op == 0 {
						r.Schema = decisionlog.SchemaExecutionV1
					}
					got.put(r)
					want.put(r)
					r.EvalNS = -1 // the caller's record changing later changes no kept copy
				default:
					g, w := got.get(id), want.get(id)
					if diff := cmp.Diff(w, g); diff != "" {
						t.Fatalf("step %d: get(%s) (-list +slots):\n%s", step, id, diff)
					}
					if g != nil {
						g.Allow = !g.Allow // nor does changing what get returned
					}
				}
			}
		})
	}
}

// TestDecisionCachePutAllocatesNothing: once full, remembering a decision copies it into a slot
// (a list element and a heap copy of the record cost three allocations a decision).
func TestDecisionCachePutAllocatesNothing(t *testing.T) {
	const max = 64
	c := newDecisionCache(max)
	recs := make([]decisionlog.Record, 4*max)
	for i := range recs {
		recs[i] = decisionlog.Record{Schema: decisionlog.SchemaDecisionV1, DecisionID: "d-" + strconv.Itoa(i)}
	}
	for i := range recs {
		c.put(&recs[i])
	}
	n := 0
	if allocs := testing.AllocsPerRun(1000, func() {
		c.put(&recs[n%len(recs)])
		n++
	}); allocs != 0 {
		t.Errorf("put: %v allocations, want 0", allocs)
	}
}
