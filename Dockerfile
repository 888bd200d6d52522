# sagapipe orchestrator: a static binary on a distroless base, run as non-root.
#   docker build -t sagapipe/orchestrator .
#   docker run --rm -p 8080:8080 -e SAGAPIPE_BROKERS=kafka:9092 \
#     -e SAGAPIPE_REGISTRY_URL=http://schema-registry:8081 sagapipe/orchestrator
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/orchestrator ./cmd/orchestrator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/orchestrator /usr/local/bin/orchestrator
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/orchestrator"]
CMD ["run"]
