#!/usr/bin/env bash
# Builds a one-layer OCI image archive from the busybox-static root filesystem
# of scripts/make-rootfs.sh, for `ctr -n k8s.io images import` (the tests reach
# no registry).
#
#   scripts/oci-image.sh OUT.tar NAME:TAG CMD [ARG...]
#
# OUT.tar is an OCI image layout (oci-layout, index.json, blobs/sha256/...) for
# linux/amd64 whose config has Cmd = CMD ARG...; index.json names the image
# NAME:TAG (annotation io.containerd.image.name, which `ctr images import`
# uses, and org.opencontainers.image.ref.name = TAG). The archive is
# reproducible: same busybox and arguments, same digests. Needs busybox-static,
# jq, gzip, GNU tar.
#
# The images of the tests that drive containerd (tests/real_containerd/):
#   scripts/oci-image.sh pause.tar localhost/netattach-pause:1 /bin/sh -c \
#       "trap 'exit 0' TERM INT; while :; do sleep 1 & wait; done"
#   scripts/oci-image.sh test.tar localhost/netattach-test:1 /bin/sh
set -euo pipefail

usage() { echo "usage: $0 OUT.tar NAME:TAG CMD [ARG...]" >&2; exit 2; }
[[ $# -ge 3 ]] || usage
out=$1
name=$2
shift 2
[[ $name == *:* && ${name##*:} != */* ]] || { echo "oci-image: NAME:TAG wanted, not $name" >&2; exit 2; }
tag=${name##*:}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
layout=$work/layout
mkdir -p "$layout/blobs/sha256"

"$(dirname "$0")/make-rootfs.sh" "$work/rootfs"

# Writes stdin as a blob; prints "DIGEST SIZE".
blob() {
    local tmp=$work/blob.tmp digest
    cat >"$tmp"
    digest=$(sha256sum "$tmp" | cut -d' ' -f1)
    mv "$tmp" "$layout/blobs/sha256/$digest"
    echo "sha256:$digest $(stat -c %s "$layout/blobs/sha256/$digest")"
}

tar -C "$work/rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -cf "$work/layer.tar" .
diff_id=sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
read -r layer_digest layer_size < <(gzip -n -9 -c "$work/layer.tar" | blob)

read -r config_digest config_size < <(
    jq -cn --arg diff_id "$diff_id" '{
        architecture: "amd64",
        os: "linux",
        config: {
            Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            Cmd: $ARGS.positional,
            WorkingDir: "/"
        },
        rootfs: { type: "layers", diff_ids: [$diff_id] }
    }' --args "$@" | tr -d '\n' | blob
)

read -r manifest_digest manifest_size < <(
    jq -cn --arg cd "$config_digest" --argjson cs "$config_size" \
        --arg ld "$layer_digest" --argjson ls "$layer_size" '{
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs },
        layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $ld, size: $ls }]
    }' | tr -d '\n' | blob
)

jq -cn --arg md "$manifest_digest" --argjson ms "$manifest_size" --arg name "$name" --arg tag "$tag" '{
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: [{
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        digest: $md,
        size: $ms,
        platform: { architecture: "amd64", os: "linux" },
        annotations: {
            "io.containerd.image.name": $name,
            "org.opencontainers.image.ref.name": $tag
        }
    }]
}' >"$layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

tar -C "$layout" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -cf "$out.new" oci-layout index.json blobs
mv "$out.new" "$out"
