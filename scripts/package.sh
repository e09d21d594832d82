#!/usr/bin/env bash
# Builds the Debian package libnginx-mod-http-upstream-healthcheck for Debian 12's nginx (release build, dpkg-deb) and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
pkg=libnginx-mod-http-upstream-healthcheck
mod=ngx_http_upstream_healthcheck_module.so
conf=mod-http-upstream-healthcheck.conf
# Debian's module packages enable themselves as 50-<conf> (dh_nginx's default priority).
link=50-$conf
out=$root/target/debian-pkg
stage=$out/root
die() { echo "package: $*" >&2; exit 1; }

scripts/setup.sh --build
env_out=$(scripts/build.sh debian --release) || die "scripts/build.sh debian --release failed"
module=$(sed -n 's/^NGX_HC_MODULE=//p' <<<"$env_out")
[[ -f $module ]] || die "no module in the output of build.sh: $env_out"

# The ABI the module was built for: the one Debian's installed nginx provides (nginx, or
# nginx-core/-light/-extras on older releases), from the same source version as nginx-dev.
abi=() providers=()
for p in nginx nginx-core nginx-light nginx-extras; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $st == "install ok installed" ]] || continue
  a=$(dpkg-query -W -f='${Provides}' "$p" | tr ',' '\n' | sed -n 's/^ *\(nginx-abi-[^ ]*\).*/\1/p')
  [[ -n $a ]] && { abi+=("$a"); providers+=("$p=$(dpkg-query -W -f='${Version}' "$p")"); }
done
mapfile -t abi < <(printf '%s\n' "${abi[@]}" | sort -u | sed '/^$/d')
((${#abi[@]} == 1)) || die "expected one nginx-abi-* among the installed nginx packages, found: ${abi[*]:-none}"
dev_version=$(dpkg-query -W -f='${Version}' nginx-dev)
for pv in "${providers[@]}"; do
  [[ ${pv#*=} == "$dev_version" ]] || die "${pv%%=*} ${pv#*=} and nginx-dev $dev_version differ: the module would be built for another nginx"
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)-${DEB_REVISION:-1}
arch=$(dpkg --print-architecture)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH=$epoch
maintainer=${DEB_MAINTAINER:-$(git log -1 --format='%an <%ae>' 2>/dev/null || true)}
[[ $maintainer == *"<"*"@"*">" ]] || die "set DEB_MAINTAINER='Name <email>' (no git author to take it from)"

rm -rf "$stage" && mkdir -p "$stage/DEBIAN"
doc=$stage/usr/share/doc/$pkg
install -d -m 755 "$stage/usr/lib/nginx/modules" "$stage/usr/share/nginx/modules-available" "$doc/examples"
# Stripped as dh_strip strips shared objects.
install -m 644 "$module" "$stage/usr/lib/nginx/modules/$mod"
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$stage/usr/lib/nginx/modules/$mod"
echo "load_module modules/$mod;" >"$stage/usr/share/nginx/modules-available/$conf"
install -m 644 contrib/prometheus/healthcheck-rules.yml contrib/grafana/healthcheck-dashboard.json "$doc/examples/"
gzip -9n <CHANGELOG.md >"$doc/changelog.gz"
{
  printf '%s (%s) bookworm; urgency=medium\n\n' "$pkg" "$version"
  printf '  * Built from %s with scripts/package.sh\n    for Debian'"'"'s nginx %s (%s).\n\n' \
    "$(git describe --always --dirty 2>/dev/null || echo 'the source tree')" "$dev_version" "${abi[0]}"
  printf ' -- %s  %s\n' "$maintainer" "$(date -R -u -d "@$epoch")"
} | gzip -9n >"$doc/changelog.Debian.gz"

# DEP-5 copyright: the module, and the Rust crates (and standard library) linked into it.
python3 - "$doc/copyright" <<'EOF'
import json, subprocess, sys
meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", subprocess.check_output(["rustc", "-vV"], text=True).split("host: ")[1].split()[0]]))
tree = subprocess.check_output(
    ["cargo", "tree", "-e", "normal", "--prefix", "none", "-f", "{p}", "--locked"], text=True)
linked = {(l.split()[0], l.split()[1].lstrip("v")) for l in tree.splitlines() if l.strip()}
def dep5(spdx):
    return " or ".join("Expat" if x.strip() == "MIT" else x.strip() for x in spdx.replace("/", " OR ").split(" OR "))
root = next(p for p in meta["packages"] if p["id"] == meta["resolve"]["root"])
out = [
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
    "Upstream-Name: " + root["name"],
    "",
    "Files: *",
    "Copyright: The " + root["name"] + " authors",
    "License: " + dep5(root["license"]),
    "",
]
# Crates from a registry: the workspace's own members (the pure core) are the module's source.
deps = sorted((p for p in meta["packages"] if (p["name"], p["version"]) in linked and p["source"] is not None),
              key=lambda p: p["name"])
for p in deps:
    holders = p["authors"] or ["The " + p["name"] + " authors"]
    out += ["Files: vendor/%s-%s/*" % (p["name"], p["version"]),
            "Copyright: " + "\n ".join(holders),
            "License: " + dep5(p["license"]),
            "Comment: Rust crate, linked statically into the module.",
            ""]
out += ["Files: vendor/rust-std/*",
        "Copyright: The Rust Project Developers",
        "License: Apache-2.0 or Expat",
        "Comment: The Rust standard library, linked statically into the module.",
        "",
        "License: Apache-2.0",
        " Licensed under the Apache License, Version 2.0 (the \"License\"); you may not",
        " use this file except in compliance with the License.",
        " .",
        " On Debian systems, the complete text of the Apache License, Version 2.0 can",
        " be found in \"/usr/share/common-licenses/Apache-2.0\".",
        "",
        "License: Expat",
        " Permission is hereby granted, free of charge, to any person obtaining a copy",
        " of this software and associated documentation files (the \"Software\"), to deal",
        " in the Software without restriction, including without limitation the rights",
        " to use, copy, modify, merge, publish, distribute, sublicense, and/or sell",
        " copies of the Software, and to permit persons to whom the Software is",
        " furnished to do so, subject to the following conditions:",
        " .",
        " The above copyright notice and this permission notice shall be included in",
        " all copies or substantial portions of the Software.",
        " .",
        " THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR",
        " IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,",
        " FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE",
        " AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER",
        " LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,",
        " OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE",
        " SOFTWARE."]
if any("Unlicense" in p["license"] for p in deps):
    out += ["",
            "License: Unlicense",
            " This is free and unencumbered software released into the public domain.",
            " .",
            " Anyone is free to copy, modify, publish, use, compile, sell, or distribute",
            " this software, either in source code form or as a compiled binary, for any",
            " purpose, commercial or non-commercial, and by any means.",
            " .",
            " In jurisdictions that recognize copyright laws, the author or authors of",
            " this software dedicate any and all copyright interest in the software to the",
            " public domain. We make this dedication for the benefit of the public at large",
            " and to the detriment of our heirs and successors. We intend this dedication",
            " to be an overt act of relinquishment in perpetuity of all present and future",
            " rights to this software under copyright law.",
            " .",
            " THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR",
            " IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,",
            " FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE",
            " AUTHORS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN",
            " ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION",
            " WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.",
            " .",
            " For more information, please refer to <https://unlicense.org/>"]
open(sys.argv[1], "w").write("\n".join(out) + "\n")
EOF
chmod 644 "$doc/copyright"

# Maintainer scripts: what dh_nginx writes into Debian's own libnginx-mod-* packages.
maint_header='#!/bin/sh
set -e
# As dh_nginx writes it for Debian'"'"'s libnginx-mod-* packages.'
cat >"$stage/DEBIAN/postinst" <<EOF
$maint_header
for confpair in $conf:$link  ; do
	from=\$(echo \$confpair | cut -d: -f1)
	to=\$(echo \$confpair | cut -d: -f2)

	if [ -L /etc/nginx/modules-enabled/\$to.removed ]; then
		rm /etc/nginx/modules-enabled/\$to.removed
		removed_link=true
	else
		removed_link=false
	fi

	# Symlink on
	# 1) Fresh installations
	# 2) Reinstalls after automatic removes (preserve admin actions)
	if [ -z "\$2" -o "\$removed_link" = "true" ]; then
		ln -sf /usr/share/nginx/modules-available/\$from \\
			/etc/nginx/modules-enabled/\$to
	fi
done

if [ "\$1" = "configure" ] ; then
	if which dpkg-trigger >/dev/null 2>&1 ; then
		dpkg-trigger --no-await nginx-reload
	fi

fi
EOF
cat >"$stage/DEBIAN/prerm" <<EOF
$maint_header
if [ "\$1" = "remove" ] || [ "\$1" = "deconfigure" ] ; then
	for confpair in $conf:$link  ; do
		from=\$(echo \$confpair | cut -d: -f1)
		to=\$(echo \$confpair | cut -d: -f2)

		if [ -L /etc/nginx/modules-enabled/\$to ]; then
			mv /etc/nginx/modules-enabled/\$to /etc/nginx/modules-enabled/\$to.removed
		fi
	done
fi
EOF
cat >"$stage/DEBIAN/postrm" <<EOF
$maint_header
if [ "\$1" = "purge" ] ; then
	for confpair in $conf:$link  ; do
		from=\$(echo \$confpair | cut -d: -f1)
		to=\$(echo \$confpair | cut -d: -f2)

		if [ -L /etc/nginx/modules-enabled/\$to ]; then
			rm /etc/nginx/modules-enabled/\$to
		fi
		if [ -L /etc/nginx/modules-enabled/\$to.removed ]; then
			rm /etc/nginx/modules-enabled/\$to.removed
		fi
	done
fi

if [ "\$1" = "remove" ] ; then
	for confpair in $conf:$link  ; do
		from=\$(echo \$confpair | cut -d: -f1)
		to=\$(echo \$confpair | cut -d: -f2)

		if [ -L /etc/nginx/modules-enabled/\$to ]; then
			mv /etc/nginx/modules-enabled/\$to /etc/nginx/modules-enabled/\$to.removed
		fi
	done

	if which dpkg-trigger >/dev/null 2>&1 ; then
		dpkg-trigger --no-await nginx-reload
	fi
fi
EOF
chmod 755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

# Shared-library dependencies of the module (nginx's own symbols resolve in the nginx binary).
shlib_dir=$out/shlibdeps
rm -rf "$shlib_dir" && mkdir -p "$shlib_dir/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$pkg" "$pkg" >"$shlib_dir/debian/control"
shlibs=$(cd "$shlib_dir" && dpkg-shlibdeps -O --warnings=0 "$stage/usr/lib/nginx/modules/$mod" | sed -n 's/^shlibs:Depends=//p')

# Installed-Size as dpkg-gencontrol counts it: KiB per file (rounded up), one per other entry.
installed_size=$(cd "$stage" && find . -path ./DEBIAN -prune -o ! -path . -printf '%y %s\n' |
  awk '$1 == "f" { s += int(($2 + 1023) / 1024); next } { s += 1 } END { print s }')

cat >"$stage/DEBIAN/control" <<EOF
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: ${abi[0]}${shlibs:+, $shlibs}
Recommends: nginx
Section: httpd
Priority: optional
Description: Active health checks for nginx upstreams
 A dynamic module for Debian's nginx that probes the peers of the upstreams
 marked with upstream_healthcheck (tcp, http or https, with rise/fall
 verdicts) and sets nginx's own down flag, so the stock balancers skip dead
 peers and take them back when they recover.
 .
 It serves the health of every peer as text, JSON, Prometheus metrics and
 HTML, and takes peers or upstreams out at run time through a control API.
 Example Prometheus alert rules and a Grafana dashboard are under
 /usr/share/doc/$pkg/examples.
EOF
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort | xargs md5sum) >"$stage/DEBIAN/md5sums"
chmod 644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"
find "$stage" -depth -exec touch -h -d "@$epoch" {} +

deb=$out/${pkg}_${version}_${arch}.deb
rm -f "$out"/*.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
