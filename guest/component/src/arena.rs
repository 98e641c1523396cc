//! The guest's allocator: a bump arena for everything a call allocates and frees before the
//! next one, over talc for what outlives it.
//!
//! A decision allocates a few dozen short-lived blocks (the lowered request, the token's claims,
//! the identity, the lowered decision) and frees every one of them by the time the host's
//! post-return call ends. In the guest, where each talc call is a chain of bounds-checked wasm
//! functions, those allocations were ~15% of a warm HS256 decision (perf, guest symbols). A
//! bump pointer with a count of live blocks makes them an add and a compare: when the count
//! returns to zero the arena is empty and the pointer goes back to the start.
//!
//! No crate does this for `GlobalAlloc` on wasm (bumpalo is an explicit arena, not a global
//! allocator, and cannot free), hence this file.
//!
//! Soundness does not rest on every call freeing what it allocated. A block is only reused when
//! the live count says nothing in the arena is allocated. A block that escapes its call (a lazily
//! initialised static, say) keeps the count above zero; the next call notices the arena was never
//! emptied ([`Arena::call_starts`]) and sets it aside for good (never reused, never handed to
//! talc), starting a fresh one. After [`MAX_RETIRED`] such retirements everything goes to talc.
//! A call that outgrows the arena takes the rest from talc. Loading a policy, whose structures
//! live as long as the instance, bypasses the arena entirely ([`Arena::persistent`]).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

/// Bytes per arena: a decision with a maximal token and an audit event uses well under half.
const CHUNK: usize = 128 << 10;
const CHUNK_ALIGN: usize = 16;
/// Arenas set aside because a block in them outlived its call.
const MAX_RETIRED: usize = 4;

pub(crate) struct Arena {
    /// Start of the current arena; 0 before the first one is taken from talc.
    base: Cell<usize>,
    /// The bump pointer.
    next: Cell<usize>,
    /// Blocks handed out from the current arena and not yet freed.
    live: Cell<usize>,
    /// Calls currently loading a policy: while non-zero, allocations go to talc.
    persistent: Cell<u32>,
    /// The live count reached zero since the last call started.
    emptied: Cell<bool>,
    /// Arenas set aside (start addresses); a free inside one is ignored.
    retired: [Cell<usize>; MAX_RETIRED],
    talc: talc::wasm::WasmDynamicTalc,
}

// SAFETY: the guest is built for wasm32 without the atomics feature: one thread, so the `Cell`s
// are never accessed concurrently.
unsafe impl Sync for Arena {}

impl Arena {
    pub(crate) const fn new() -> Self {
        Arena {
            base: Cell::new(0),
            next: Cell::new(0),
            live: Cell::new(0),
            persistent: Cell::new(0),
            emptied: Cell::new(true),
            retired: [const { Cell::new(0) }; MAX_RETIRED],
            talc: talc::wasm::new_wasm_dynamic_allocator(),
        }
    }

    fn contains(base: usize, ptr: usize) -> bool {
        base != 0 && ptr >= base && ptr - base < CHUNK
    }

    /// Takes a new arena from talc; false when talc has no memory or too many were retired.
    fn start(&self) -> bool {
        let old = self.base.get();
        if old != 0 {
            let Some(slot) = self.retired.iter().find(|s| s.get() == 0) else { return false };
            slot.set(old);
            self.base.set(0);
        }
        let Ok(layout) = Layout::from_size_align(CHUNK, CHUNK_ALIGN) else { return false };
        // SAFETY: `layout` has a non-zero size.
        let p = unsafe { self.talc.alloc(layout) } as usize;
        if p == 0 {
            return false;
        }
        self.base.set(p);
        self.next.set(p);
        self.live.set(0);
        true
    }

    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        // Zero-sized requests never reach a global allocator; refusing them here also keeps a
        // block from starting exactly at the arena's end, where `contains` would not see it.
        if self.persistent.get() != 0 || layout.size() == 0 || layout.size() > CHUNK / 4 {
            return None;
        }
        if self.base.get() == 0 && !self.start() {
            return None;
        }
        let at = self.next.get().checked_add(layout.align() - 1)? & !(layout.align() - 1);
        let end = at.checked_add(layout.size())?;
        if end - self.base.get() > CHUNK {
            return None;
        }
        self.next.set(end);
        self.live.set(self.live.get() + 1);
        Some(at as *mut u8)
    }

    /// Marks the start of an exported call (after its arguments were lowered). If the arena was
    /// never emptied since the previous call started, a block outlived that call: the arena is
    /// retired and a fresh one started.
    pub(crate) fn call_starts(&self) {
        if !self.emptied.get() && self.base.get() != 0 {
            self.start();
        }
        self.emptied.set(false);
    }

    /// Takes the first arena now, so a pre-initialised snapshot already holds it.
    pub(crate) fn reserve(&self) {
        if self.base.get() == 0 {
            self.start();
        }
    }

    /// Runs `f` with the arena bypassed: for allocations that outlive the call.
    pub(crate) fn persistent<R>(&self, f: impl FnOnce() -> R) -> R {
        self.persistent.set(self.persistent.get() + 1);
        let r = f();
        self.persistent.set(self.persistent.get().saturating_sub(1));
        r
    }
}

// SAFETY: blocks come either from talc (and go back to it) or from an arena region talc handed
// out and that is never returned to it. An arena block is reused only after the live count of its
// arena returns to zero, that is after every block handed out from it was freed.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(p) => p,
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { self.talc.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let p = ptr as usize;
        let base = self.base.get();
        if Self::contains(base, p) {
            let live = self.live.get().saturating_sub(1);
            self.live.set(live);
            if live == 0 {
                self.next.set(base);
                self.emptied.set(true);
            } else if p + layout.size() == self.next.get() {
                // The newest block: give its bytes back at once (a Vec growing then shrinking).
                self.next.set(p);
            }
        } else if !self.retired.iter().any(|r| Self::contains(r.get(), p)) {
            // SAFETY: not an arena block, so talc allocated it.
            unsafe { self.talc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = ptr as usize;
        let base = self.base.get();
        if Self::contains(base, p) {
            // The newest block grows or shrinks in place when the arena has room.
            if p + layout.size() == self.next.get() && new_size <= CHUNK - (p - base) {
                self.next.set(p + new_size);
                return ptr;
            }
        } else if !self.retired.iter().any(|r| Self::contains(r.get(), p)) {
            // SAFETY: talc's block, forwarded with the caller's guarantees.
            return unsafe { self.talc.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for `alloc`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller of the two sizes and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: `ptr` was allocated by this allocator with `layout`.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}
