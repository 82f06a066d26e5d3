# syntax=docker/dockerfile:1
# lookback: one static binary on a distroless base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/lookback .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/lookback /usr/local/bin/lookback
# The embedded defaults keep their files here (mount a volume to keep them).
ENV LOOKBACK_DATA_DIR=/data
WORKDIR /data
# 8080: HTTP API, health and metrics. 9092: the embedded Kafka broker, when
# no --kafka-brokers are given (it listens on 127.0.0.1 unless
# --embedded-kafka-addr says otherwise).
EXPOSE 8080 9092
ENTRYPOINT ["/usr/local/bin/lookback"]
CMD ["serve"]
