//! Transparent huge pages for the memory a graph search walks.
//!
//! An HNSW walk touches a few hundred nodes and vectors scattered over tens or hundreds of
//! MB. With 4 KiB pages many touches also miss the TLB, and the page walk adds its own
//! memory latency to the load (docs/search.md has what this bought as measured: little on
//! 60k-item graphs, more on a 1M one). Most Linux systems ship THP as `madvise` (only regions
//! that ask get 2 MiB pages), and USearch maps its arenas itself without asking, so the graph
//! asks for them here: `madvise(MADV_HUGEPAGE)` marks the regions and `MADV_COLLAPSE`
//! (Linux 6.1+) moves the pages already written into huge pages at once instead of waiting
//! for `khugepaged`. Both are hints: any failure (another OS, an old kernel, THP off) leaves
//! the memory as it was, so the functions report what they did and never fail.

/// Anonymous writable mappings of the process, as (start, end) address ranges.
pub type Ranges = Vec<(usize, usize)>;

/// The process's anonymous private writable mappings now (empty where unknown).
pub fn anonymous_mappings() -> Ranges {
    #[cfg(target_os = "linux")]
    {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return Vec::new();
        };
        maps.lines().filter_map(parse_anonymous).collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Vec::new()
    }
}

/// One `/proc/self/maps` line → its range when it is anonymous, private and writable.
/// `start-end perms offset dev inode [path]`; `[heap]`, `[stack]` and files are skipped.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_anonymous(line: &str) -> Option<(usize, usize)> {
    let mut f = line.split_whitespace();
    let (range, perms) = (f.next()?, f.next()?);
    let (_offset, _dev, inode) = (f.next()?, f.next()?, f.next()?);
    if f.next().is_some() || inode != "0" || !perms.starts_with("rw") || !perms.ends_with('p') {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    Some((
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    ))
}

/// The parts of `now` not covered by `before` (both sorted, as `/proc/self/maps` lists
/// them): memory mapped in between, including regions that grew.
pub fn new_since(before: &[(usize, usize)], now: &[(usize, usize)]) -> Ranges {
    let mut out = Vec::new();
    for &(mut a, b) in now {
        for &(c, d) in before {
            if d <= a || c >= b {
                continue;
            }
            if c > a {
                out.push((a, c));
            }
            a = a.max(d);
            if a >= b {
                break;
            }
        }
        if a < b {
            out.push((a, b));
        }
    }
    out
}

/// The system's THP mode (`always`, `madvise` or `never`; None where unknown), for reports:
/// under `always` every process gets huge pages without asking.
pub fn system_mode() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let (_, rest) = text.split_once('[')?;
    Some(rest.split_once(']')?.0.to_owned())
}

const HUGE: usize = 2 << 20;

/// The 2 MiB-aligned interior of [a, b), if any: only whole huge pages can be backed.
fn aligned(a: usize, b: usize) -> Option<(usize, usize)> {
    let start = a.checked_add(HUGE - 1)? & !(HUGE - 1);
    let end = b & !(HUGE - 1);
    (end > start).then_some((start, end))
}

/// Asks for huge pages over each range (its 2 MiB-aligned interior); returns the bytes the
/// kernel accepted the hint for (0 off Linux).
pub fn advise(ranges: &[(usize, usize)]) -> usize {
    let mut advised = 0;
    for &(a, b) in ranges {
        let Some((start, end)) = aligned(a, b) else {
            continue;
        };
        if advise_range(start, end - start) {
            advised += end - start;
        }
    }
    advised
}

/// Follows the mappings a growing structure adds: each [`Watch::advise_new`] advises what
/// was mapped since the last call, so an arena asks for huge pages while it is still mostly
/// untouched and its later pages fault in as huge ones directly.
pub struct Watch {
    seen: Ranges,
}

impl Watch {
    pub fn new() -> Self {
        Self {
            seen: anonymous_mappings(),
        }
    }

    /// Advises the mappings new since the last call; returns the bytes advised.
    pub fn advise_new(&mut self) -> usize {
        let now = anonymous_mappings();
        let advised = advise(&new_since(&self.seen, &now));
        self.seen = now;
        advised
    }
}

impl Default for Watch {
    fn default() -> Self {
        Self::new()
    }
}

/// Asks for huge pages under a buffer this process owns (a `Vec`'s storage).
pub fn advise_slice<T>(data: &[T]) -> usize {
    let a = data.as_ptr() as usize;
    advise(&[(a, a + std::mem::size_of_val(data))])
}

#[cfg(target_os = "linux")]
fn advise_range(start: usize, len: usize) -> bool {
    // MADV_COLLAPSE is 25 on every Linux architecture; the libc crate names it only for glibc.
    const MADV_COLLAPSE: libc::c_int = 25;
    let ptr = start as *mut libc::c_void;
    // SAFETY: the range is page-aligned and lies inside a mapping of this process; both
    // advices change only how the pages are backed, never their contents.
    unsafe {
        if libc::madvise(ptr, len, libc::MADV_HUGEPAGE) != 0 {
            return false;
        }
        // Failure here (kernel < 6.1, no free huge pages) leaves the hint for khugepaged.
        // Fails (EINVAL) for 2 MiB blocks never touched: those fault in as huge pages
        // later anyway, now that the region asked for them.
        libc::madvise(ptr, len, MADV_COLLAPSE);
    }
    true
}

#[cfg(not(target_os = "linux"))]
fn advise_range(_start: usize, _len: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_anonymous_private_writable_lines() {
        let anon = "7f0000000000-7f0000400000 rw-p 00000000 00:00 0 ";
        assert_eq!(
            parse_anonymous(anon),
            Some((0x7f00_0000_0000, 0x7f00_0040_0000))
        );
        for other in [
            "55d000000000-55d000021000 rw-p 00000000 00:00 0          [heap]",
            "7f0000000000-7f0000400000 r--p 00000000 00:00 0 ",
            "7f0000000000-7f0000400000 rw-s 00000000 00:05 123 /dev/zero (deleted)",
            "7f0000000000-7f0000400000 rw-p 00001000 fd:01 4242 /usr/lib/libc.so.6",
            "not a maps line",
        ] {
            assert_eq!(parse_anonymous(other), None, "{other}");
        }
    }

    #[test]
    fn new_ranges_are_what_was_not_mapped_before() {
        let before = vec![(100, 200), (300, 400)];
        // One unchanged, one grown at both ends, one new.
        let now = vec![(100, 200), (250, 450), (500, 600)];
        assert_eq!(
            new_since(&before, &now),
            vec![(250, 300), (400, 450), (500, 600)]
        );
        assert_eq!(new_since(&now, &now), vec![]);
        assert_eq!(new_since(&[], &now), now);
    }

    #[test]
    fn only_whole_huge_pages_are_advised() {
        assert_eq!(aligned(1, HUGE), None);
        assert_eq!(aligned(1, 3 * HUGE + 5), Some((HUGE, 3 * HUGE)));
        assert_eq!(aligned(0, 2 * HUGE), Some((0, 2 * HUGE)));
        assert_eq!(aligned(usize::MAX - 10, usize::MAX), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_fresh_buffer_shows_up_as_new_and_takes_the_hint() {
        let before = anonymous_mappings();
        assert!(
            !before.is_empty(),
            "a running process has anonymous mappings"
        );
        let mut buf = vec![0u8; 8 * HUGE];
        buf.iter_mut().step_by(4096).for_each(|b| *b = 1);
        let grown = new_since(&before, &anonymous_mappings());
        let (a, b) = (buf.as_ptr() as usize, buf.as_ptr() as usize + buf.len());
        assert!(
            grown.iter().any(|&(s, e)| s <= a + HUGE && e >= b - HUGE),
            "the 16 MiB buffer at {a:#x} is among the new mappings {grown:x?}"
        );
        // The kernel may refuse (THP set to never): then nothing is counted, and the
        // contents are untouched either way.
        let advised = advise_slice(&buf);
        assert!(advised == 0 || advised >= 6 * HUGE, "{advised}");
        assert!(buf.iter().step_by(4096).all(|&b| b == 1));
    }
}
