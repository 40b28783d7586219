package rollup

// KeySlots is one key a sum reads and the slots of it that it adds, in the
// order the cells list them.
type KeySlots struct {
	Unit   Unit
	period int64 // as Unit.period returns it
	Slots  []int
}

// Key returns the KV key of ad's rollup that holds these slots.
func (k KeySlots) Key(adID string) string { return k.Unit.key(adID, k.period) }

// linearKeys is how many distinct keys GroupCells finds by a scan before it
// builds an index: a tiling touches a handful.
const linearKeys = 8

// GroupCells groups cells by the key holding them, in the order of each key's
// first cell. It builds no key strings (KeySlots.Key does, once per key): a
// query groups its couple of hundred cells again for every ad.
func GroupCells(cells []Cell) []KeySlots {
	type keyID struct {
		unit   Unit
		period int64
	}
	var (
		keys  []KeySlots
		index map[keyID]int
	)
	for _, c := range cells {
		period, slot := c.Unit.period(c.Start)
		i := -1
		if index != nil {
			if j, ok := index[keyID{c.Unit, period}]; ok {
				i = j
			}
		} else {
			for j := range keys {
				if keys[j].Unit == c.Unit && keys[j].period == period {
					i = j
					break
				}
			}
		}
		if i < 0 {
			i = len(keys)
			keys = append(keys, KeySlots{Unit: c.Unit, period: period})
			if index != nil {
				index[keyID{c.Unit, period}] = i
			} else if len(keys) > linearKeys {
				index = make(map[keyID]int, 2*len(keys))
				for j, ks := range keys {
					index[keyID{ks.Unit, ks.period}] = j
				}
			}
		}
		keys[i].Slots = append(keys[i].Slots, slot)
	}
	return keys
}

// AddSlots folds v's slots listed in slots into a; a nil v is empty. The
// slots must not change while a is in use (see AddSlot).
func (a *Aggregate) AddSlots(v *Rollup, slots []int) error {
	if v == nil {
		return nil
	}
	for _, i := range slots {
		if s, ok := v.Slots[i]; ok {
			if err := a.AddSlot(s); err != nil {
				return err
			}
		}
	}
	return nil
}

// Sum adds up ad's slots in cells, reading each key once through get (a nil
// rollup counts as empty), in the order GroupCells lists the keys. get
// returns the rollup at a key and the visitor sets settled apart from it
// (see SettledKey; nil when none). get's error stops it and is returned as it
// is.
func Sum(adID string, cells []Cell, get func(u Unit, key string) (value, settled *Rollup, err error)) (*Aggregate, error) {
	agg := &Aggregate{}
	for _, ks := range GroupCells(cells) {
		v, settled, err := get(ks.Unit, ks.Key(adID))
		if err != nil {
			return nil, err
		}
		if err := agg.AddSlots(v, ks.Slots); err != nil {
			return nil, err
		}
		// A settled slot holds visitors only: adding it unions them in.
		if err := agg.AddSlots(settled, ks.Slots); err != nil {
			return nil, err
		}
	}
	return agg, nil
}
