"""Code every Parlance service shares: settings base, gRPC server bootstrap, request ids,
logging, errors and the metrics endpoint. The generated gRPC stubs live beside it in the
namespace packages parlance.<service>.v1."""
