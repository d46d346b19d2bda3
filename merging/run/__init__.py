"""Running the merged model: generation, teacher forcing, next-token probes, the cached answerer."""
