# Multi-stage build of nt-server: a build stage with the toolchain, a small runtime stage.
# No image registry is reachable here: build the base image with debootstrap (README, "Docker") and pass
#   --build-arg BASE=local/bookworm:base
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
COPY scripts/install_deps.sh /src/scripts/install_deps.sh
RUN /src/scripts/install_deps.sh && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DNT_BUILD_TESTS=OFF -DNT_BUILD_BENCH=OFF \
 && ninja -C /build nt-server nt

FROM ${BASE} AS runtime
COPY scripts/install_deps.sh /tmp/install_deps.sh
RUN /tmp/install_deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/install_deps.sh \
 && groupadd --system --gid 10001 nt && useradd --system --uid 10001 --gid 10001 --no-create-home nt
COPY --from=build /build/server/nt-server /build/client/nt /usr/local/bin/
USER 10001:10001
# gRPC; Prometheus metrics when started with --metrics_address=0.0.0.0:9464.
EXPOSE 50051 9464
# grpc.health.v1 check through the bundled CLI; set NT_HEALTH_ADDRESS when --address differs.
ENV NT_HEALTH_ADDRESS=127.0.0.1:50051
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
  CMD /usr/local/bin/nt health --server "$NT_HEALTH_ADDRESS"
ENTRYPOINT ["/usr/local/bin/nt-server"]
CMD ["--address=0.0.0.0:50051"]
