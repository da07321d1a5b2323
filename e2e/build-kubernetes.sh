#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler from
# Debian's source package (no Kubernetes download is reachable here) and
# installs etcd; caches the binaries in ~/.cache/weir-e2e/kubernetes-<ver>.
# Prints the directory holding the binaries.
set -euo pipefail
cache="${HOME}/.cache/weir-e2e"
out="$cache/kubernetes-1.20.2/bin"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-scheduler" ] && [ -x "$out/kube-controller-manager" ] && command -v etcd > /dev/null; then
  echo "$out"
  exit 0
fi
mkdir -p "$cache" "$out"
export DEBIAN_FRONTEND=noninteractive
if ! command -v etcd > /dev/null; then
  apt-get update -qq >&2
  apt-get install -y -qq etcd-server rsync >&2
fi
work="$cache/build"
rm -rf "$work" && mkdir -p "$work" && cd "$work"
# A private deb-src list, with the mirror the machine already uses.
mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1 | awk '{print $2}')
mirror=${mirror:-http://deb.debian.org/debian}
echo "deb-src $mirror bookworm main" > "$work/src.list"
opts=(-o Dir::Etc::sourcelist="$work/src.list" -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0)
apt-get "${opts[@]}" update -qq >&2
apt-get "${opts[@]}" source -qq --download-only kubernetes >&2
dpkg-source -x --no-check kubernetes_*.dsc src >&2
apt-get download -qq golang-1.19-go golang-1.19-src golang-github-modern-go-reflect2-dev >&2
mkdir go
for d in golang-1.19-go_*.deb golang-1.19-src_*.deb golang-github-modern-go-reflect2-dev_*.deb; do dpkg -x "$d" go; done
rm -rf src/vendor/github.com/modern-go/reflect2
cp -r go/usr/share/gocode/src/github.com/modern-go/reflect2 src/vendor/github.com/modern-go/reflect2
export GOROOT="$work/go/usr/lib/go-1.19" PATH="$work/go/usr/lib/go-1.19/bin:$PATH"
export GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 GOCACHE="$cache/gocache"
(cd src && make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >&2)
cp src/_output/local/bin/linux/amd64/kube-* "$out/"
cd / && rm -rf "$work"
echo "$out"
