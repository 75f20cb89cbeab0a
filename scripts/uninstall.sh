#!/usr/bin/env bash
# Removes what scripts/install.sh installed, given the same --prefix and
# --user, then the directories that are left empty (never the prefix
# itself). Idempotent: files already gone are fine.
#
#   scripts/uninstall.sh [--prefix DIR] [--user]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) args+=(--prefix "${2:?--prefix needs a directory}"); shift 2 ;;
        --prefix=*|--user) args+=("$1"); shift ;;
        -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "uninstall.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
files="$("$here/install.sh" "${args[@]}" --list)"
# The prefix is the part every path shares before bin/.
# (No `| head`: with pipefail, head closing early can kill echo with SIGPIPE.)
prefix="${files%%$'\n'*}"
prefix="${prefix%/bin/*}"
echo "$files" | while read -r f; do
    if [ -e "$f" ] || [ -L "$f" ]; then
        rm -f "$f"
        echo "removed $f"
    fi
done
# Empty directories, deepest first, up to but not including the prefix.
echo "$files" | while read -r f; do
    d="$(dirname "$f")"
    while [ "$d" != "$prefix" ] && [ "${d#"$prefix"/}" != "$d" ]; do
        rmdir "$d" 2>/dev/null || break
        d="$(dirname "$d")"
    done
done
