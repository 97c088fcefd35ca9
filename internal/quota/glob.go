package quota

import "unicode/utf8"

// GlobMatch reports whether name matches pattern, where '*' matches any run of
// characters, '/' included (model names look like "meta-llama/Llama-3.1-8B",
// so path.Match's '*' would not do), and '?' matches one character. Every other
// character matches itself. It runs in O(len(pattern)·len(name)) worst case and
// does not allocate.
func GlobMatch(pattern, name string) bool {
	p, n := 0, 0
	starP, starN := -1, 0
	for n < len(name) {
		if p < len(pattern) {
			switch pattern[p] {
			case '*':
				starP, starN = p, n
				p++
				continue
			case '?':
				_, size := utf8.DecodeRuneInString(name[n:])
				p++
				n += size
				continue
			default:
				if pattern[p] == name[n] {
					p++
					n++
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		// Let the last star swallow one more character and retry.
		_, size := utf8.DecodeRuneInString(name[starN:])
		starN += size
		p, n = starP+1, starN
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// MatchAny reports whether name matches one of patterns; an empty list
// matches everything.
func MatchAny(patterns []string, name string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, pat := range patterns {
		if GlobMatch(pat, name) {
			return true
		}
	}
	return false
}
