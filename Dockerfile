# syntax=docker/dockerfile:1
#
# dusk-relay container image: a static Go binary on distroless, run as a
# non-root user, state in the /data volume. See DOCKER.md.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t dusk-relay .

# Keep the Go minor in step with the `go` line of go.mod (a test checks it).
ARG GO_VERSION=1.26

# ---- build stage ------------------------------------------------------------
# Runs on the build machine's own platform and cross-compiles (pure Go, no
# cgo), so multi-arch builds (`docker buildx --platform linux/arm64`) need no
# emulation.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src

# Dependencies first: this layer is reused until go.mod/go.sum change.
COPY go.mod go.sum ./
RUN go mod download && go mod verify

COPY . .
# CGO_ENABLED=0: a fully static binary, which the distroless/static runtime
# requires (it has no libc). The build cache mount only speeds up rebuilds.
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /dusk-relay ./cmd/dusk-relay \
 && go version -m /dusk-relay | grep -q 'CGO_ENABLED=0'

# The runtime image has no shell, so the volume's mount point is prepared
# here: owned by the runtime user (65532 = distroless "nonroot"), 0700 like the
# data directory the relay itself would create.
RUN mkdir -p /rootfs/data/dusk-relay \
 && chown -R 65532:65532 /rootfs/data \
 && chmod 0700 /rootfs/data/dusk-relay

# ---- runtime stage ----------------------------------------------------------
# distroless/static: CA certificates (for the gif upstream), tzdata, /etc/passwd
# with the nonroot user; no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot

LABEL org.opencontainers.image.title="dusk-relay" \
      org.opencontainers.image.description="Dusk relay: libp2p circuit relay v2, rendezvous, TURN/STUN, directory, gif" \
      org.opencontainers.image.licenses="MIT"

COPY --from=build /dusk-relay /usr/local/bin/dusk-relay
COPY --from=build --chown=65532:65532 /rootfs/data /data

# Keypair, turn_secret and directory.sqlite3 live in /data/dusk-relay: the
# same path the Rust relay's image used (XDG_DATA_HOME=/data), so its volume
# can be reused as is (after a chown, see DOCKER.md).
ENV DUSK_DATA_DIR=/data/dusk-relay
# Metrics/health stay on the container's loopback by default: the HEALTHCHECK
# runs in the same network namespace, and nothing is exposed by accident
# (with --network host this would be the host's loopback). To let Prometheus
# scrape, set DUSK_METRICS_ADDR=0.0.0.0:9464 and publish the port on a
# private address (docker-compose.yml does this on 127.0.0.1).
ENV DUSK_METRICS_ADDR=127.0.0.1:9464

VOLUME /data
WORKDIR /data
# Numeric so that runtimes can verify "non-root" without /etc/passwd lookups
# (Kubernetes runAsNonRoot).
USER 65532:65532

# libp2p (TCP), TURN/STUN (UDP and TCP), TURN relay range (UDP). These are the
# config defaults; change them together with DUSK_RELAY_PORT,
# DUSK_TURN_UDP_PORT, DUSK_TURN_TCP_PORT and DUSK_TURN_PORT_RANGE_*.
EXPOSE 4001/tcp 3478/udp 3478/tcp 49152-65535/udp

# No shell in the image: exec form, the binary probes its own /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/dusk-relay", "healthcheck"]

# SIGTERM triggers a graceful shutdown (under 5 s; Docker waits 10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dusk-relay"]
