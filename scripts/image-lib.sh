# Sourced by scripts/build-image.sh, check-image.sh and bench-rolling.sh: the container tools
# (buildah and debootstrap from Debian, installed once per machine), the image names, and the
# base images the Dockerfile names.
#
# No container daemon runs here and, on the development machine, no image registry answers, so:
#   - images are built and run with buildah (overlay storage under /var/lib/containers, shared
#     by every clone: the layer cache survives clones like ~/.cache/seqserve does);
#   - where docker.io does not answer, the two base images the Dockerfile's FROM lines name are
#     made here, under those exact names, from Debian's packages (stand-ins, labelled
#     org.seqserve.stand-in): docker.io/library/debian:bookworm-slim (debootstrap minbase,
#     slimmed as the official image is) and docker.io/library/rust:1-bookworm (that image plus
#     Debian's build tools and this machine's own Rust toolchain, copied in: Debian's rustc is too
#     old and rustup cannot download here), and this machine's extra certificate authorities (its
#     egress proxy re-signs TLS: without them pip and cargo inside the build cannot reach PyPI or
#     crates.io).
# shellcheck shell=bash
_image_lib_dir=$(dirname "${BASH_SOURCE[0]}")
source "$_image_lib_dir/need-debian.sh"
need_debian buildah buildah
need_debian debootstrap debootstrap
# Needed only where the kernel lacks native overlay diffs; cheap, and makes overlay work anywhere.
need_debian fuse-overlayfs fuse-overlayfs

IMAGE_CACHE=${SEQSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/seqserve}/image
mkdir -p "$IMAGE_CACHE"
SEQSERVE_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$_image_lib_dir/../Cargo.toml" | head -1)
# The tags the Dockerfile's header and k8s/deployment.yaml use.
image_tag() { # cpu|cuda
    case "$1" in
        cpu) echo "localhost/seqserve:$SEQSERVE_VERSION" ;;
        cuda) echo "localhost/seqserve:$SEQSERVE_VERSION-cuda" ;;
        *) echo "unknown variant $1 (cpu|cuda)" >&2; return 2 ;;
    esac
}
# overlay: layers are diffs (vfs would copy every layer whole: the torch layer is 5 GB).
bah() { buildah --storage-driver overlay "$@"; }
image_exists() { bah inspect --type image "$1" >/dev/null 2>&1; }
image_label() { # IMAGE LABEL
    bah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

# The base images, as the Dockerfile names them.
BASE_SLIM=docker.io/library/debian:bookworm-slim
BASE_RUST=docker.io/library/rust:1-bookworm
# Bump when a stand-in's recipe below changes (it is then remade).
SLIM_RECIPE=1 RUST_RECIPE=2
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

registry_answers() { # docker.io's registry answers 401 (auth needed) to an anonymous /v2/
    [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' https://registry-1.docker.io/v2/ || true)" = 401 ]
}

make_debian_slim() {
    echo "[image] making the stand-in $BASE_SLIM (debootstrap --variant=minbase bookworm)" >&2
    local c mnt
    c=$(bah from scratch)
    mnt=$(bah mount "$c")
    debootstrap --variant=minbase bookworm "$mnt" "$DEBIAN_MIRROR" >"$IMAGE_CACHE/debootstrap.log" 2>&1 ||
        { tail -20 "$IMAGE_CACHE/debootstrap.log" >&2; bah rm "$c" >/dev/null; return 1; }
    # Slimmed as the official -slim images are (debuerreotype --slimify): no documentation, manual
    # pages or translations, now or from later installs.
    cat >"$mnt/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
    find "$mnt/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$mnt/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$mnt"/usr/share/{man,groff,info,lintian,linda,locale}/*
    # apt as in the official image: the three bookworm suites, no package cache kept.
    rm -f "$mnt/etc/apt/sources.list"
    cat >"$mnt/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$mnt/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/*.bin "$mnt"/var/cache/apt/archives/*.deb \
        "$mnt"/var/log/*.log "$mnt"/var/log/apt/* "$mnt/etc/resolv.conf" "$mnt/etc/hostname"
    bah umount "$c" >/dev/null
    bah config --cmd bash --created-by "debootstrap --variant=minbase bookworm, slimmed (stand-in)" \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --label org.seqserve.stand-in="debootstrap --variant=minbase bookworm, slimmed" \
        --label org.seqserve.stand-in-recipe="$SLIM_RECIPE" "$c"
    bah commit --quiet --rm "$c" "$BASE_SLIM" >/dev/null
}

make_rust_bookworm() {
    local toolchain home name rustc_version c mnt
    home=$(rustup show home)
    name=$(rustup show active-toolchain | cut -d' ' -f1)
    toolchain=$home/toolchains/$name
    rustc_version=$(rustc --version | cut -d' ' -f2)
    echo "[image] making the stand-in $BASE_RUST ($BASE_SLIM + build tools + this machine's Rust $rustc_version)" >&2
    c=$(bah from --pull=never "$BASE_SLIM")
    # What the official image's base (buildpack-deps:bookworm) brings that a Rust build uses.
    bah run --isolation chroot "$c" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends build-essential pkg-config ca-certificates \
        curl git libssl-dev >/dev/null && rm -rf /var/lib/apt/lists/*' >&2
    mnt=$(bah mount "$c")
    mkdir -p "$mnt/usr/local/rustup/toolchains" "$mnt/usr/local/cargo/bin"
    # The toolchain without its HTML documentation (~800 MB).
    tar -C "$home/toolchains" --exclude="$name/share/doc" -cf - "$name" |
        tar -C "$mnt/usr/local/rustup/toolchains" -xf -
    cp "$(command -v rustup)" "$mnt/usr/local/cargo/bin/rustup"
    # This machine's own extra certificate authorities (an egress proxy that re-signs TLS), so that
    # pip and cargo in the build stage reach PyPI and crates.io as they do on the host. Build
    # stage only: the runtime image's base (the slim stand-in) does not get them.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$mnt/usr/local/share/ca-certificates/"
    fi
    for proxy in cargo rustc rustdoc cargo-clippy clippy-driver rustfmt cargo-fmt; do
        ln -sf rustup "$mnt/usr/local/cargo/bin/$proxy"
    done
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n\n[overrides]\n' \
        "$name" >"$mnt/usr/local/rustup/settings.toml"
    bah umount "$c" >/dev/null
    bah run --isolation chroot "$c" -- update-ca-certificates >/dev/null
    [ -d "$toolchain" ] || { echo "[image] no toolchain at $toolchain" >&2; return 1; }
    bah config --created-by "build-essential pkg-config curl git libssl-dev, Rust $rustc_version (stand-in)" \
        --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
        --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env RUST_VERSION="$rustc_version" \
        --label org.seqserve.stand-in="$BASE_SLIM stand-in + build-essential pkg-config curl git libssl-dev + this machine's Rust toolchain ($name)" \
        --label org.seqserve.stand-in-recipe="$RUST_RECIPE" \
        --label org.seqserve.rustc="$rustc_version" --label org.seqserve.extra-ca="$(extra_ca_hash)" "$c"
    bah commit --quiet --rm "$c" "$BASE_RUST" >/dev/null
}

extra_ca_hash() { cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-16; }

# Makes sure both base images exist: pulled where docker.io answers, else the stand-ins (made once,
# remade only when their recipe or this machine's rustc changes).
ensure_base_images() {
    exec 8>"$IMAGE_CACHE/.base-lock"
    flock 8
    local rustc_version
    rustc_version=$(rustc --version | cut -d' ' -f2)
    if registry_answers; then
        for img in "$BASE_SLIM" "$BASE_RUST"; do
            if ! image_exists "$img" || [ -n "$(image_label "$img" org.seqserve.stand-in)" ]; then
                echo "[image] pulling $img" >&2
                bah pull --quiet "$img" >/dev/null
            fi
        done
    else
        if ! image_exists "$BASE_SLIM" ||
            { [ -n "$(image_label "$BASE_SLIM" org.seqserve.stand-in)" ] &&
                [ "$(image_label "$BASE_SLIM" org.seqserve.stand-in-recipe)" != "$SLIM_RECIPE" ]; }; then
            make_debian_slim
            bah rmi "$BASE_RUST" >/dev/null 2>&1 || true # built on the old one
        fi
        if ! image_exists "$BASE_RUST" ||
            { [ -n "$(image_label "$BASE_RUST" org.seqserve.stand-in)" ] &&
                { [ "$(image_label "$BASE_RUST" org.seqserve.stand-in-recipe)" != "$RUST_RECIPE" ] ||
                    [ "$(image_label "$BASE_RUST" org.seqserve.rustc)" != "$rustc_version" ] ||
                    [ "$(image_label "$BASE_RUST" org.seqserve.extra-ca)" != "$(extra_ca_hash)" ]; }; }; then
            make_rust_bookworm
        fi
    fi
    flock -u 8
}

# The image's entrypoint and command, one argument per line (what `docker run IMAGE` runs).
image_command() { # IMAGE
    bah inspect --type image "$1" | python3 -c 'import json, sys
c = json.load(sys.stdin)["Docker"]["config"]
for arg in (c.get("Entrypoint") or []) + (c.get("Cmd") or []):
    print(arg)'
}
# The pid of the process listening on 127.0.0.1:PORT (empty, and status 0, if none: callers run
# under set -e and pipefail, their EXIT traps too).
listener_pid() { # PORT
    ss -ltnpH "sport = :$1" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | awk 'NR == 1'
}
