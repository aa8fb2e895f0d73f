#!/usr/bin/env bash
# make test-kernel: run tests/kernel inside a small VM, against the real Linux NSM driver
# (Debian's nsm.ko) and an NSM implemented independently of this project (QEMU's virtio-nsm).
#
# Why a shell script: every step is an existing tool (apt-get, configure/ninja, dpkg-deb, cpio,
# qemu); the script only sequences them, caches what they produce, and checks each result.
#
# Steps (docs/kernel-vm.md has the longer story):
#   1. apt with a configuration of its own (never the machine's sources): Debian trixie's `qemu`
#      source package and bookworm-backports' `linux-image-6.12.*-amd64` package.
#   2. Build only qemu-system-x86_64 from that source, with libcbor and gnutls (the device needs
#      both; Debian's own binary is built without libcbor and has no virtio-nsm-pci).
#   3. Take vmlinuz and the modules the guest needs (nsm, 9p) out of the kernel package.
#   4. Cache 2 and 3 by version outside the repository, so a fresh clone reuses them.
#   5. Build a busybox initramfs, boot q35 + virtio-nsm-pci with the host root read-only over 9p
#      and a second, writable 9p share for the results; the guest's /init runs pytest on
#      tests/kernel with the repository's .venv and writes its exit status to the results share.
#   6. Exit with that status; a missing status (guest crash, timeout) is a failure.
#
# Environment:
#   NSM_KERNEL_VM_CACHE    cache directory (default /var/cache/nsm-attestation/kernel-vm as root,
#                          else ${XDG_CACHE_HOME:-~/.cache}/nsm-attestation/kernel-vm)
#   NSM_KERNEL_VM_TIMEOUT  seconds the VM may run before it is killed (default 900)
#   NSM_KERNEL_VM_ACCEL    kvm or tcg (default: kvm if the kernel boots under KVM here, else tcg)
#   NSM_KERNEL_VM_REFRESH  1 = refresh the package indexes now (otherwise after 7 days)
#   DEBIAN_MIRROR          default: the machine's own Debian mirror, else deb.debian.org
#   PYTEST_ARGS            what the guest passes to pytest (default: tests/kernel -v)
#   NSM_KERNEL_VM_JUNIT    a path to copy the guest's JUnit XML report to
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/tools/kernel-vm
PYTHON=$REPO/.venv/bin/python

if [ -n "${NSM_KERNEL_VM_CACHE:-}" ]; then
    CACHE=$NSM_KERNEL_VM_CACHE
elif [ "$(id -u)" = 0 ]; then
    CACHE=/var/cache/nsm-attestation/kernel-vm
else
    CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/nsm-attestation/kernel-vm
fi
TIMEOUT=${NSM_KERNEL_VM_TIMEOUT:-900}
PYTEST_ARGS=${PYTEST_ARGS:-tests/kernel -v}
# The guest modules, in load order: 9p sits on netfs and 9pnet_virtio; nsm has no dependency
# (virtio_pci is built in). build_initramfs checks the order against each module's `depends`.
MODULES="netfs 9pnet 9pnet_virtio 9p nsm"

# SeaBIOS from Debian's seabios package, linuxboot_dma.bin and kvmvapic.bin from qemu-system-data
# (the +ds source has no firmware blobs to build from).
FIRMWARE=(-L /usr/share/seabios -L /usr/share/qemu)

# apt downloads as its sandbox user _apt when run as root: give it a directory it may write to.
download_dir() {
    mkdir -p "$1"
    if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then
        chmod 0755 "$(dirname "$1")" && chown _apt "$1"
    fi
}

log() { printf '[test-kernel %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$PYTHON" ] || die "$PYTHON is missing: run 'make .venv/.installed' first"
for tool in apt-get apt-cache dpkg-deb cpio gzip xz timeout flock modinfo; do
    command -v "$tool" >/dev/null || die "$tool is missing (make test-kernel installs it as root)"
done
[ -x /bin/busybox ] && /bin/busybox --list | grep -x insmod >/dev/null ||
    die "/bin/busybox (busybox-static) is missing"

mkdir -p "$CACHE"
# One run at a time per cache: a second run waits instead of building into the same place.
exec 9>"$CACHE/.lock"
flock 9
# Leftovers of a run that was killed before its own cleanup (the lock says none is running).
rm -rf "$CACHE"/build.* "$CACHE"/kernel.*

# --- 1. apt, configured from scratch -------------------------------------------------------------
APTDIR=$CACHE/apt
mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    # The machine's own Debian mirror (a local mirror or proxy may be the only way out).
    local uri
    uri=$(apt-get indextargets --format '$(REPO_URI) $(TARGET_OF)' 2>/dev/null |
        awk '$2 == "deb" && $1 ~ /\/debian\/?$/ { print $1; exit }')
    echo "${uri:-http://deb.debian.org/debian/}"
}
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APTDIR/sources.list" -o "Dir::Etc::sourceparts=$APTDIR/empty"
    -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache"
    -o "Dir::Etc::preferences=$APTDIR/preferences" -o "Dir::Etc::preferencesparts=$APTDIR/empty"
    -o APT::Architecture=amd64 -o APT::Architectures::=amd64 -o Debug::NoLocking=1
)
apt_get() { apt-get -q "${APT_OPTS[@]}" "$@"; }
apt_cache() { apt-cache "${APT_OPTS[@]}" "$@"; }

setup_apt() {
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/empty"
    : >"$APTDIR/preferences"
    local m keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -r "$keyring" ] || die "$keyring is missing (package debian-archive-keyring)"
    m=$(mirror)
    # trixie carries QEMU 10.0 (virtio-nsm arrived in 9.2); bookworm-backports the 6.12 kernel.
    cat >"$APTDIR/sources.list.new" <<SOURCES
deb-src [signed-by=$keyring] $m trixie main
deb [arch=amd64 signed-by=$keyring] $m bookworm-backports main
SOURCES
    local stale=0
    cmp -s "$APTDIR/sources.list.new" "$APTDIR/sources.list" || stale=1
    mv "$APTDIR/sources.list.new" "$APTDIR/sources.list"
    # Indexes are refreshed weekly, not on every run: a cached run then needs no network.
    if [ "$stale" = 1 ] || [ "${NSM_KERNEL_VM_REFRESH:-0}" = 1 ] ||
        [ -z "$(find "$APTDIR/lists" -name '*InRelease' -mtime -7 -print -quit)" ]; then
        log "apt-get update (own configuration, $m)"
        apt_get update -qq || die "apt-get update failed"
    fi
}

# --- 2. QEMU ------------------------------------------------------------------------------------
qemu_version() {
    apt_cache showsrc qemu | awk '/^Version:/ { print $2 }' | sort -V | tail -n1
}

build_qemu() {  # $1 = Debian version, $2 = destination directory
    local version=$1 dest=$2 work
    work=$(mktemp -d "$CACHE/build.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the trap must remove this run's directory
    trap "rm -rf '$work'" EXIT
    log "downloading the qemu source package $version"
    download_dir "$work/dl"
    (cd "$work/dl" && apt_get source --download-only "qemu=$version" >"$work/apt-source.log") ||
        die "apt-get source qemu=$version failed: $(tail -n 5 "$work/apt-source.log")"
    # The upstream tarball as Debian ships it (+ds: without bundled wheels and firmware blobs).
    # Debian's patches are not applied: this is upstream QEMU of that version.
    local orig
    orig=$(ls "$work"/dl/qemu_*.orig.tar.*)
    mkdir "$work/src"
    tar -xf "$orig" -C "$work/src" --strip-components=1
    cd "$work/src"
    # configure builds its python venv offline from python/wheels, which +ds removed: fetch the
    # exact versions QEMU pins (pythondeps.toml, group [meson]) from PyPI.
    local wheels
    wheels=$("$PYTHON" -c '
import sys, tomllib
group = tomllib.load(open("pythondeps.toml", "rb"))["meson"]
print(" ".join(f"{name}=={spec['"'"'installed'"'"']}" for name, spec in group.items()))')
    log "fetching the wheels configure pins: $wheels"
    # shellcheck disable=SC2086  # one argument per pinned wheel
    "$PYTHON" -m pip download --no-deps --only-binary=:all: -d python/wheels $wheels \
        >"$work/pip.log" 2>&1 || die "pip download $wheels failed: $(tail -n 5 "$work/pip.log")"
    # +ds has no firmware blobs, but with bzip2 installed meson tries to unpack the EDK2 ones
    # (and fails). The VM boots SeaBIOS from Debian's seabios package, so skip them.
    grep -q 'unpack_edk2_blobs = bzip2.found()' meson.build ||
        die "meson.build no longer has the edk2 unpack line this script disables"
    sed -i 's/unpack_edk2_blobs = bzip2.found()/unpack_edk2_blobs = false/' meson.build
    log "configuring (x86_64-softmmu, libcbor, gnutls)"
    mkdir build && cd build
    ../configure --target-list=x86_64-softmmu --enable-libcbor --enable-gnutls \
        --disable-docs --disable-werror --disable-gtk --disable-sdl --disable-vnc \
        --disable-spice --disable-opengl --disable-virglrenderer --disable-xen --disable-tools \
        --disable-guest-agent --disable-capstone --disable-download --disable-install-blobs \
        >"$work/configure.log" 2>&1 || { tail -n 30 "$work/configure.log" >&2; die "configure failed"; }
    grep -qx 'CONFIG_VIRTIO_NSM=y' x86_64-softmmu-config-devices.mak ||
        die "this QEMU build has no virtio-nsm (CONFIG_VIRTIO_NSM): libcbor or gnutls not found?"
    log "building qemu-system-x86_64 with ninja -j$(nproc) (minutes: ~1,700 steps)"
    ninja -j"$(nproc)" qemu-system-x86_64 >"$work/ninja.log" 2>&1 ||
        { tail -n 30 "$work/ninja.log" >&2; die "ninja failed"; }
    ./qemu-system-x86_64 -device help | grep '"virtio-nsm-pci"' >/dev/null ||
        die "the built qemu-system-x86_64 does not list virtio-nsm-pci"
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    install -m 0755 qemu-system-x86_64 "$dest.tmp/"
    cp "$work/configure.log" "$work/ninja.log" "$dest.tmp/"
    mv "$dest.tmp" "$dest"
    cd "$REPO"
    rm -rf "$work"
    trap - EXIT
}

# --- 3. The kernel ------------------------------------------------------------------------------
kernel_package() {
    # linux-image-6.12.<n>+<suffix>-amd64, the generic flavour: not -cloud-amd64 or -rt-amd64,
    # not -unsigned or -dbg.
    apt_cache pkgnames linux-image-6.12 |
        grep -E '^linux-image-6\.12\.[0-9]+[^-]*-amd64$' | sort -V | tail -n1
}

extract_kernel() {  # $1 = package name, $2 = destination directory
    local pkg=$1 dest=$2 work release m ko
    work=$(mktemp -d "$CACHE/kernel.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    log "downloading $pkg"
    download_dir "$work/dl"
    (cd "$work/dl" && apt_get download "$pkg" >/dev/null) || die "apt-get download $pkg failed"
    dpkg-deb -x "$work"/dl/"$pkg"_*.deb "$work/root"
    release=$(ls "$work/root/lib/modules")
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/modules"
    cp "$work/root/boot/vmlinuz-$release" "$dest.tmp/vmlinuz"
    echo "$release" >"$dest.tmp/release"
    for m in $MODULES; do
        ko=$(find "$work/root/lib/modules/$release" -name "$m.ko*" -print -quit)
        [ -n "$ko" ] || die "$pkg has no module $m"
        # busybox insmod reads plain .ko only.
        case $ko in
            *.xz) xz -dc "$ko" >"$dest.tmp/modules/$m.ko" ;;
            *.zst) zstd -qdc "$ko" >"$dest.tmp/modules/$m.ko" ;;
            *) cp "$ko" "$dest.tmp/modules/$m.ko" ;;
        esac
    done
    mv "$dest.tmp" "$dest"
    rm -rf "$work"
    trap - EXIT
}

# --- 5. The initramfs and the VM ----------------------------------------------------------------
build_initramfs() {  # $1 = kernel directory, $2 = output file, $3 = scratch directory
    local kdir=$1 out=$2 root=$3/initramfs loaded="" m dep
    mkdir -p "$root"/{bin,dev,proc,sys,mnt,etc,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    for m in $MODULES; do
        # Fail here, not with an obscure insmod error in the guest, if the order is wrong.
        for dep in $(modinfo -F depends "$kdir/modules/$m.ko" | tr ',' ' '); do
            case " $loaded " in *" $dep "*) ;; *) die "module $m needs $dep loaded before it" ;; esac
        done
        loaded="$loaded $m"
        cp "$kdir/modules/$m.ko" "$root/lib/modules/"
    done
    install -m 0755 "$HERE/init" "$root/init"
    # What the guest needs to know about the host; sourced by /init.
    {
        printf 'REPO=%q\n' "$REPO"
        printf 'MODULES=%q\n' "$MODULES"
        printf 'PYTEST_ARGS=%q\n' "$PYTEST_ARGS"
    } >"$root/etc/test.env"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
}

# The accelerator and CPU model, as QEMU arguments. KVM when this kernel boots under it here,
# else TCG (always works, only slower). /dev/kvm can exist and yet fail: a nested KVM may refuse
# part of `-cpu host` ("failed to set MSR 0x10a"), or fail to emulate an instruction the guest
# runs ("KVM internal error ... emulation failure" on the decompressor's BMI2 code, after which
# QEMU pauses the VM for ever). So each KVM candidate boots the kernel without an initramfs: it
# panics at once, and with panic=-1 and -no-reboot QEMU exits 0, in seconds. The verdict is
# cached per QEMU, kernel, host kernel and CPU model.
pick_cpu() {  # $1 = qemu binary, $2 = kernel directory
    local candidate key verdict=$CACHE/cpu-probe
    case ${NSM_KERNEL_VM_ACCEL:-} in tcg) echo "-accel tcg -cpu max"; return ;; esac
    key="$1 $(cat "$2/release") $(uname -r) $(grep -m1 '^model name' /proc/cpuinfo || true)"
    if [ -f "$verdict" ] && [ "$(head -n1 "$verdict")" = "$key" ]; then
        tail -n1 "$verdict"
        return
    fi
    candidate="-accel tcg -cpu max"
    for kvm in "-accel kvm -cpu host" "-accel kvm -cpu host,-arch-capabilities"; do
        # shellcheck disable=SC2086  # $kvm is a list of arguments
        if [ -w /dev/kvm ] && timeout 20 "$1" "${FIRMWARE[@]}" $kvm -M q35 -m 256 -nodefaults \
            -no-reboot -display none -serial none -kernel "$2/vmlinuz" \
            -append "panic=-1" >/dev/null 2>&1; then
            candidate=$kvm
            break
        fi
    done
    if [ "${NSM_KERNEL_VM_ACCEL:-}" = kvm ] && [ "${candidate#-accel kvm}" = "$candidate" ]; then
        die "NSM_KERNEL_VM_ACCEL=kvm, but this kernel does not boot under KVM here"
    fi
    printf '%s\n%s\n' "$key" "$candidate" >"$verdict"
    echo "$candidate"
}

main() {
    setup_apt
    local qver kpkg kver qdir kdir
    # (|| true: an empty answer is reported below, with a message, instead of set -e's silence)
    qver=$(qemu_version || true)
    [ -n "$qver" ] || die "no qemu source package in trixie's index"
    kpkg=$(kernel_package || true)
    [ -n "$kpkg" ] || die "no linux-image-6.12.*-amd64 in bookworm-backports' index"
    kver=$(apt_cache show "$kpkg" | awk '/^Version:/ { print $2 }' | sort -V | tail -n1)
    # An epoch's colon is not welcome in a path.
    qdir=$CACHE/qemu-${qver#*:}
    kdir=$CACHE/$kpkg-$kver
    if [ -x "$qdir/qemu-system-x86_64" ]; then
        log "QEMU $qver: cached in $qdir"
    else
        build_qemu "$qver" "$qdir"
    fi
    if [ -r "$kdir/vmlinuz" ]; then
        log "kernel $kpkg $kver: cached in $kdir"
    else
        extract_kernel "$kpkg" "$kdir"
    fi

    # Older versions are dead weight once the current ones are in place.
    find "$CACHE" -mindepth 1 -maxdepth 1 \( -name 'qemu-*' -o -name 'linux-image-*' \) \
        ! -path "$qdir" ! -path "$kdir" -exec rm -rf {} +

    local run cpu rc
    run=$(mktemp -d "${TMPDIR:-/tmp}/nsm-kernel-vm.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$run'" EXIT
    mkdir "$run/results"
    build_initramfs "$kdir" "$run/initrd.gz" "$run"
    cpu=$(pick_cpu "$qdir/qemu-system-x86_64" "$kdir")
    log "booting $(cat "$kdir/release") under QEMU $qver ($cpu, timeout ${TIMEOUT}s)"
    # -nodefaults: no VGA, NIC or CD-ROM, so no option ROMs beyond SeaBIOS and linuxboot.
    # The console is the serial port on stdout; results come back through the `results` share.
    rc=0
    # shellcheck disable=SC2086  # $cpu is a list of arguments
    timeout --foreground -k 10 "$TIMEOUT" "$qdir/qemu-system-x86_64" \
        "${FIRMWARE[@]}" \
        $cpu -M q35 -m 1024 -smp 2 -nodefaults -no-reboot \
        -display none -serial stdio -monitor none \
        -kernel "$kdir/vmlinuz" -initrd "$run/initrd.gz" \
        -append "console=ttyS0 quiet panic=-1" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$run/results,mount_tag=results,security_model=none" \
        -device virtio-nsm-pci </dev/null || rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        die "the VM did not finish within ${TIMEOUT}s"
    elif [ "$rc" != 0 ]; then
        die "qemu-system-x86_64 exited with status $rc"
    fi
    [ -s "$run/results/rc" ] || die "the guest wrote no result (it crashed or did not boot)"
    rc=$(cat "$run/results/rc")
    if [ -n "${NSM_KERNEL_VM_JUNIT:-}" ] && [ -f "$run/results/junit.xml" ]; then
        cp "$run/results/junit.xml" "$NSM_KERNEL_VM_JUNIT"
    fi
    log "guest pytest exit status: $rc"
    exit "$rc"
}

main "$@"
