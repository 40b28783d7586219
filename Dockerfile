# Image of the admetric binary for compose.yaml and production. It expects
# NATS_URL and DATABASE_URL (or DB_*): it does not run its own servers there.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/admetric ./cmd/admetric

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/admetric /admetric
ENV HTTP_ADDR=:8080 DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["/admetric"]
