#!/usr/bin/env bash
# The Debian package, built with CPack from a build directory ($1), checked the way an
# operator meets it: `dpkg-deb -c` lists the binary, the unit and the conffile; `dpkg -i`
# into a scratch root (chrootless maintainer scripts, DPKG_ROOT set) installs it, creates the
# kiln user in that root and adds it to that root's docker group; purge removes it again.
# Nothing on this host changes: adduser/useradd/systemctl on PATH are tripwires for the host.
set -euo pipefail
build="$(cd "$1" && pwd)"
source_dir="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cd "$build"
cpack -G DEB -B "$work/out" >"$work/cpack.log" 2>&1 || { cat "$work/cpack.log"; fail "cpack"; }
deb="$(ls "$work"/out/kiln_*.deb)"
echo "built $(basename "$deb") ($(stat -c %s "$deb") bytes)"

listing="$(dpkg-deb -c "$deb")"
echo "$listing"
for f in ./usr/bin/kiln ./lib/systemd/system/kiln.service ./etc/kiln/config.toml; do
    grep -qE " $f\$" <<<"$listing" || fail "dpkg-deb -c does not list $f"
done
grep -qE '^-rwxr-xr-x .* \./usr/bin/kiln$' <<<"$listing" || fail "/usr/bin/kiln is not 0755"

dpkg-deb -e "$deb" "$work/control"
grep -qx '/etc/kiln/config.toml' "$work/control/conffiles" || fail "config.toml is not a conffile"
for s in postinst prerm postrm; do
    [ -x "$work/control/$s" ] || fail "$s missing or not executable"
    sh -n "$work/control/$s" || fail "$s has a syntax error"
done
grep -q '^Depends:.*libc6' "$work/control/control" || fail "no shared-library dependencies"

if [ "$(id -u)" != 0 ]; then
    # dpkg installs files as root:root; without root only the package's contents are checked.
    echo "SKIP install into a scratch root: needs root (the package contents are checked)"
    exit 77  # ctest reports the test as skipped (SKIP_RETURN_CODE)
fi

# Tripwires: the scripts must edit the scratch root, never this host.
mkdir -p "$work/bin"
for t in adduser addgroup systemctl deluser; do
    printf '#!/bin/sh\necho "%s called on the host: $*" >&2\nexit 99\n' "$t" >"$work/bin/$t"
    chmod +x "$work/bin/$t"
done

root="$work/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
: >"$root/var/lib/dpkg/status"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:*:19000:0:99999:7:::\n' >"$root/etc/shadow"
printf 'root:x:0:\ndocker:x:998:\n' >"$root/etc/group"
printf 'root:*::\ndocker:!::\n' >"$root/etc/gshadow"

PATH="$work/bin:$PATH" dpkg --root="$root" --force-script-chrootless --force-depends \
    --log=/dev/null -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -i"; }
grep -v '^ \|depends on' "$work/dpkg.log"  # the scratch root has no libraries: --force-depends

[ -x "$root/usr/bin/kiln" ] || fail "no /usr/bin/kiln in the root"
"$root/usr/bin/kiln" --version | grep -q '^kiln ' || fail "the installed kiln does not run"
cmp -s "$root/lib/systemd/system/kiln.service" "$source_dir/packaging/kiln.service" ||
    fail "installed unit differs from packaging/kiln.service"
grep -q '^kiln:x:[0-9]*:[0-9]*:kiln GitLab runner:/var/lib/kiln:/usr/sbin/nologin$' "$root/etc/passwd" ||
    fail "postinst did not create the kiln user: $(cat "$root/etc/passwd")"
grep -qE '^docker:x:998:(.*,)?kiln(,.*)?$' "$root/etc/group" ||
    fail "kiln is not in the docker group: $(cat "$root/etc/group")"
status="$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status} ${Version}' kiln)"
[[ "$status" == "install ok installed "* ]] || fail "dpkg status: $status"
dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Conffiles}\n' kiln | grep -q '/etc/kiln/config.toml' ||
    fail "dpkg does not track the conffile"

# Installing again (an upgrade to the same version) keeps a config the operator edited.
echo 'concurrent = 7' >>"$root/etc/kiln/config.toml"
PATH="$work/bin:$PATH" dpkg --root="$root" --force-script-chrootless --force-depends \
    --force-confold --log=/dev/null -i "$deb" >"$work/dpkg2.log" 2>&1 || { cat "$work/dpkg2.log"; fail "reinstall"; }
grep -q '^concurrent = 7$' "$root/etc/kiln/config.toml" || fail "reinstall overwrote the edited config"
[ "$(grep -c '^kiln:' "$root/etc/passwd")" = 1 ] || fail "reinstall created a second kiln user"

PATH="$work/bin:$PATH" dpkg --root="$root" --force-script-chrootless --log=/dev/null \
    --purge kiln >"$work/dpkg3.log" 2>&1 || { cat "$work/dpkg3.log"; fail "purge"; }
[ ! -e "$root/usr/bin/kiln" ] || fail "purge left /usr/bin/kiln"
[ ! -e "$root/etc/kiln" ] || fail "purge left /etc/kiln"
echo "OK: package lists, installs into a scratch root, keeps an edited conffile, purges"
