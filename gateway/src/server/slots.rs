//! A slab of waiter slots: a future that waits registers once, updates its
//! slot on later polls and frees it when dropped, so the list never grows
//! with traffic, only with how many wait at once. Used by the drain signal
//! and the idle sweeper.

/// Slots reused through a free list.
pub struct Slots<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slots<T> {
    /// Stores `t`; returns its key.
    pub fn insert(&mut self, t: T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(t);
                i
            }
            None => {
                self.slots.push(Some(t));
                self.slots.len() - 1
            }
        }
    }

    /// The entry of `key`, if it is still stored.
    pub fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.slots.get_mut(key)?.as_mut()
    }

    /// A waiting future's slot: its entry when it has one (`Some`), else
    /// `new()` is stored and its key kept in `key` (`None`).
    pub fn entry(&mut self, key: &mut Option<usize>, new: impl FnOnce() -> T) -> Option<&mut T> {
        if key.is_some_and(|k| self.get_mut(k).is_some()) {
            return key.and_then(|k| self.get_mut(k));
        }
        *key = Some(self.insert(new()));
        None
    }

    /// Frees `key`.
    pub fn remove(&mut self, key: usize) {
        if let Some(s) = self.slots.get_mut(key)
            && s.take().is_some()
        {
            self.free.push(key);
        }
    }

    /// Every stored entry.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten()
    }

    /// Slots allocated (stored or free).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_slots_are_reused() {
        let mut s = Slots::default();
        let a = s.insert(1);
        let b = s.insert(2);
        s.remove(a);
        s.remove(a);
        assert_eq!(s.get_mut(a), None);
        let c = s.insert(3);
        assert_eq!(c, a, "a freed slot is reused");
        assert_eq!(s.capacity(), 2);
        assert_eq!(s.iter_mut().map(|v| *v).sum::<i32>(), 5);
        *s.get_mut(b).unwrap() = 20;
        assert_eq!(s.iter_mut().map(|v| *v).sum::<i32>(), 23);
        // A waiter stores its entry once, then gets it back.
        let mut key = None;
        assert_eq!(s.entry(&mut key, || 7), None);
        assert_eq!(key, Some(2));
        assert_eq!(s.entry(&mut key, || 99).copied(), Some(7));
        s.remove(2);
        assert_eq!(s.entry(&mut key, || 8), None, "a freed key is stored anew");
        assert_eq!(s.get_mut(2).copied(), Some(8));
    }
}
