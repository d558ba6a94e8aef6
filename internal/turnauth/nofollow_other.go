//go:build !unix

package turnauth

// noFollow: no O_NOFOLLOW here; the os.SameFile check after opening
// still catches a link swapped in after Lstat.
const noFollow = 0
