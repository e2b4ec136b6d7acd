# Prints the values of one key of a TOML file, one a line (an array prints each element).
#
#   awk -v want_table=appliance -v want_key=dns -f toml.awk secmx.toml
#
# With -v exists_only=1 it prints "present" if the key is there at all (even as an empty array).
# want_table "" means top-level keys; a table name matches both [name] and [[name]], so
# `-v want_table=listener -v want_key=address` prints the address of every [[listener]].
# This reads the subset of TOML the appliance's own keys use: basic and literal strings,
# booleans, integers, and arrays of those (also across lines). secmx itself parses the whole
# file and rejects anything invalid; this reader only has to find the appliance's settings.

BEGIN {
	table = ""
	pending = ""
}

{
	line = strip_comment($0)
	if (pending != "") {
		line = pending " " line
		pending = ""
	}
	if (line ~ /^[ \t]*$/)
		next

	if (line ~ /^[ \t]*\[/) {
		header = line
		gsub(/^[ \t]*\[+[ \t]*|[ \t]*\]+[ \t]*$/, "", header)
		table = header
		next
	}

	eq = index(line, "=")
	if (eq == 0)
		next
	key = substr(line, 1, eq - 1)
	gsub(/^[ \t]+|[ \t]+$/, "", key)
	gsub(/^["']|["']$/, "", key)
	value = substr(line, eq + 1)

	if (open_brackets(value) > 0) {
		pending = line
		next
	}
	if (table == want_table && key == want_key) {
		if (exists_only) {
			print "present"
			exit
		}
		print_values(value)
	}
}

# Drops a trailing # comment that is not inside a string.
function strip_comment(s,    i, c, quote) {
	quote = ""
	for (i = 1; i <= length(s); i++) {
		c = substr(s, i, 1)
		if (quote != "") {
			if (c == "\\" && quote == "\"")
				i++
			else if (c == quote)
				quote = ""
		} else if (c == "\"" || c == "'") {
			quote = c
		} else if (c == "#") {
			return substr(s, 1, i - 1)
		}
	}
	return s
}

# Number of [ not yet closed by ], outside strings.
function open_brackets(s,    i, c, quote, depth) {
	quote = ""
	depth = 0
	for (i = 1; i <= length(s); i++) {
		c = substr(s, i, 1)
		if (quote != "") {
			if (c == "\\" && quote == "\"")
				i++
			else if (c == quote)
				quote = ""
		} else if (c == "\"" || c == "'") {
			quote = c
		} else if (c == "[") {
			depth++
		} else if (c == "]") {
			depth--
		}
	}
	return depth
}

# Prints each scalar in a value: a string, a bare word, or the elements of an array.
function print_values(s,    i, c, quote, token, have) {
	quote = ""
	token = ""
	have = 0
	for (i = 1; i <= length(s); i++) {
		c = substr(s, i, 1)
		if (quote != "") {
			if (c == "\\" && quote == "\"") {
				i++
				token = token unescape(substr(s, i, 1))
			} else if (c == quote) {
				quote = ""
			} else {
				token = token c
			}
		} else if (c == "\"" || c == "'") {
			quote = c
			have = 1
		} else if (c == "[" || c == "]" || c == "," || c == " " || c == "\t") {
			if (have)
				print token
			token = ""
			have = 0
		} else {
			token = token c
			have = 1
		}
	}
	if (have)
		print token
}

function unescape(c) {
	if (c == "n")
		return "\n"
	if (c == "t")
		return "\t"
	return c
}
