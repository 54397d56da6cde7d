#!/usr/bin/env bash
# The container image: a static (musl) release build of jellyfin-ha on `FROM scratch`
# (webhook/server/Containerfile), built with podman and written as an OCI archive.
#
#   hack/image.sh [build]  target/image/jellyfin-ha-<version>.oci.tar, tagged
#                          ghcr.io/jellyfin-ha/jellyfin-ha:<version>; prints its sizes
#   hack/image.sh test     build it, then run it under podman as the manifests do, against
#                          the local control plane (tests/tests/image.rs), and test the
#                          kubectl plugin (webhook/server/tests/kubectl_plugin.rs)
#
# Installs what is missing (rustup's musl target; Debian's podman, runc, musl-tools). Cargo's
# target directory and podman's layer cache make a rebuild with no change quick.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$REPO_ROOT/hack/lib-bmc.sh"
cd "$REPO_ROOT"

TARGET=x86_64-unknown-linux-musl
IMAGE_DIR="$REPO_ROOT/target/image"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

ensure_image_tools() {
  local pkgs=()
  command -v podman >/dev/null || pkgs+=(podman)
  # crun, podman's default, fails on hybrid cgroups; runc works (/usr/sbin is not always on PATH).
  [[ -x /usr/sbin/runc ]] || command -v runc >/dev/null || pkgs+=(runc)
  command -v musl-gcc >/dev/null || pkgs+=(musl-tools)
  command -v strip >/dev/null || pkgs+=(binutils)
  [[ -r $CA_BUNDLE ]] || pkgs+=(ca-certificates)
  ((${#pkgs[@]} == 0)) || bmc_apt_install "${pkgs[@]}"
  command -v rustup >/dev/null || die "rustup is required for the $TARGET target (https://rustup.rs)"
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
}

# The package version Cargo reads from the workspace: the image tag, written nowhere else.
workspace_version() {
  local id
  id=$(cargo pkgid -p jellyfin-ha) || die "cargo pkgid failed"
  echo "${id##*[#@]}"
}

bench_mib() { awk -v name="$1" -v bytes="$2" 'BEGIN { printf "BENCH %s %.1f MiB\n", name, bytes / 1048576 }'; }

# Builds the image and sets IMAGE_REF and IMAGE_ARCHIVE.
build_image() {
  ensure_image_tools
  local version context
  version=$(workspace_version)
  IMAGE_REF="ghcr.io/jellyfin-ha/jellyfin-ha:$version"
  IMAGE_ARCHIVE="$IMAGE_DIR/jellyfin-ha-$version.oci.tar"
  context="$IMAGE_DIR/context"

  log "cargo build --release --target $TARGET"
  # Whole-program LTO in one codegen unit: a fifth smaller binary (19 MB instead of 24 MB). Set
  # here, not in the release profile, so host builds keep linking quickly; the musl target
  # has a directory of its own, so nothing is rebuilt for them.
  CC_x86_64_unknown_linux_musl=musl-gcc CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
    cargo build -j2 -q --release --target "$TARGET" -p jellyfin-ha ||
    die "cargo build for $TARGET failed"
  mkdir -p "$context"
  # The release profile keeps line tables for backtraces on the host; the image does without.
  strip -o "$context/jellyfin-ha" "target/$TARGET/release/jellyfin-ha"
  cp "$CA_BUNDLE" "$context/ca-certificates.crt"

  log "podman build $IMAGE_REF"
  local previous
  previous=$(podman image inspect --format '{{.Id}}' "$IMAGE_REF" 2>/dev/null || true)
  # A fixed timestamp: the same binary gives the same image.
  podman build --quiet --timestamp 0 --build-arg "VERSION=$version" \
    -f webhook/server/Containerfile -t "$IMAGE_REF" "$context" >/dev/null ||
    die "podman build failed"
  # The image the tag named before is untagged now; do not let every rebuild keep one.
  if [[ -n $previous && $previous != "$(podman image inspect --format '{{.Id}}' "$IMAGE_REF")" ]]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  rm -f "$IMAGE_ARCHIVE"
  podman save --quiet --format oci-archive -o "$IMAGE_ARCHIVE" "$IMAGE_REF" ||
    die "podman save failed"
  log "wrote $IMAGE_ARCHIVE"
  # The archive holds gzip-compressed layers, as a registry serves them; unpacked is what a
  # node stores.
  bench_mib image_size_mib "$(stat -c %s "$IMAGE_ARCHIVE")"
  bench_mib image_unpacked_mib "$(podman image inspect --format '{{.Size}}' "$IMAGE_REF")"
}

# The webhook in the image follows its ConfigMap on the local control plane: brought up unless
# it is, and taken down afterwards if this started it (JFHA_KEEP_CLUSTER=1 keeps it).
test_image() {
  build_image
  STARTED_CLUSTER=false
  if ! hack/envtest.sh status >/dev/null 2>&1; then
    STARTED_CLUSTER=true
    hack/envtest.sh up || die "the local control plane could not be started (see target/envtest/logs)"
  fi
  # No webhook runs on the host here; this stops the control plane if it was started above.
  trap 'stop_cluster_and_webhook "$IMAGE_DIR"' EXIT
  # kubectl, for the patch check and the plugin test.
  eval "$(hack/envtest.sh env)"
  JFHA_IMAGE_ARCHIVE=$IMAGE_ARCHIVE cargo test -j2 -p jellyfin-ha-e2e --test image -- --ignored "$@"
  cargo test -j2 -p jellyfin-ha --test kubectl_plugin -- --ignored "$@"
}

case ${1:-build} in
  build) build_image ;;
  test) shift; test_image "$@" ;;
  *) die "usage: $0 [build|test [TEST ARGS]]" ;;
esac
