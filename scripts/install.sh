#!/usr/bin/env bash
# Installs signald, p2pd and p2pctl with their systemd units, p2pctl's shell
# completions and the three man pages. Idempotent: running it again
# overwrites the same files. scripts/uninstall.sh removes exactly them.
#
#   scripts/install.sh [--prefix DIR] [--user] [--from DIR]
#
#   --prefix DIR  where to install (default /usr/local; with --user ~/.local)
#   --user        for one user, no root: the binaries, the p2pd user unit
#                 in PREFIX/share/systemd/user (where `systemctl --user` finds
#                 ~/.local's), completions and man pages; no signald units
#   --from DIR    take already built binaries from DIR instead of running
#                 `cargo build --release` (tests use the debug build)
#   --list        print the files it would install, one per line, and stop
#
# System units go to PREFIX/lib/systemd/system (signald.service,
# signald.socket, signald-activated.service) and PREFIX/lib/systemd/user
# (p2pd.service); their ExecStart is rewritten to PREFIX/bin.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

prefix=""
user=0
from=""
list=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        --user) user=1; shift ;;
        --from) from="${2:?--from needs a directory}"; shift 2 ;;
        --from=*) from="${1#--from=}"; shift ;;
        --list) list=1; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$prefix" ]; then
    if [ "$user" = 1 ]; then prefix="${HOME:?HOME is not set}/.local"; else prefix=/usr/local; fi
fi
case "$prefix" in
    /*) ;;
    *) prefix="$(pwd)/$prefix" ;;
esac
prefix="${prefix%/}"

bins=(signald p2pd p2pctl)
# Each line: SOURCE-KIND NAME DESTINATION (relative to the prefix).
manifest() {
    for b in "${bins[@]}"; do echo "bin $b bin/$b"; done
    if [ "$user" = 1 ]; then
        echo "unit p2pd.service share/systemd/user/p2pd.service"
    else
        for u in signald.service signald.socket signald-activated.service; do
            echo "unit $u lib/systemd/system/$u"
        done
        echo "unit p2pd.service lib/systemd/user/p2pd.service"
    fi
    echo "completion bash share/bash-completion/completions/p2pctl"
    echo "completion zsh share/zsh/site-functions/_p2pctl"
    echo "completion fish share/fish/vendor_completions.d/p2pctl.fish"
    for b in "${bins[@]}"; do echo "man $b share/man/man1/$b.1"; done
}

if [ "$list" = 1 ]; then
    manifest | while read -r _ _ dest; do echo "$prefix/$dest"; done
    exit 0
fi

if [ -z "$from" ]; then
    (cd "$repo" && cargo build --release --locked -p signald -p p2pd -p p2pctl)
    from="${CARGO_TARGET_DIR:-$repo/target}/release"
fi
for b in "${bins[@]}"; do
    [ -x "$from/$b" ] || { echo "install.sh: $from/$b is missing or not executable" >&2; exit 1; }
done

# Runs a command into DEST atomically: a reader never sees half a file, and
# a failing command leaves the old file (or none).
put() {
    local dest="$1" mode="$2" tmp
    shift 2
    mkdir -p "$(dirname "$dest")"
    tmp="$(mktemp "$dest.XXXXXX")"
    if "$@" >"$tmp"; then
        chmod "$mode" "$tmp"
        mv -f "$tmp" "$dest"
    else
        rm -f "$tmp"
        echo "install.sh: could not make $dest" >&2
        return 1
    fi
}

man_page() {
    if [ "$1" = p2pctl ]; then "$from/p2pctl" man; else "$from/$1" --man; fi
}

manifest | while read -r kind name dest; do
    out="$prefix/$dest"
    case "$kind" in
        bin) put "$out" 755 cat "$from/$name" ;;
        unit) put "$out" 644 sed "s#/usr/local/bin/#$prefix/bin/#g" "$repo/systemd/$name" ;;
        completion) put "$out" 644 "$from/p2pctl" completions "$name" ;;
        man) put "$out" 644 man_page "$name" ;;
    esac
    echo "installed $out"
done

if [ "$user" = 1 ]; then
    echo "next: systemctl --user daemon-reload && systemctl --user enable --now p2pd"
else
    echo "next: systemctl daemon-reload && systemctl enable --now signald.socket"
    echo "      (p2pd, per user: systemctl --user enable --now p2pd)"
fi
