"""Applications over the `Estimator`: prediction runs over files, video and tracking, the HTTP server, Ray."""
