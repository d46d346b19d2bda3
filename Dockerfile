# Hugging Face Spaces (Docker SDK) image for Mergescope.
# CPU Space: serves the shipped toy pair (assets/toy), offline. GPU Space: set MERGESCOPE_VLM, MERGESCOPE_LLM
# (and optionally MERGESCOPE_BASE, MERGESCOPE_DEVICE=cuda, MERGESCOPE_DTYPE=bfloat16) in the Space settings;
# The image serves public mode (rate limits per address, capped answers and uploads, private history, export off);
# MERGESCOPE_PUBLIC=0 opts out (only behind your own access control: anyone who reaches it gets no limits).
# MERGESCOPE_PROXY_HOPS=1: the Spaces proxy appends the visitor's address to X-Forwarded-For.
FROM python:3.11-slim

# Spaces run the container as uid 1000; give that user a home and own the app folder.
RUN useradd --create-home --uid 1000 user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MERGESCOPE_PROXY_HOPS=1
WORKDIR /home/user/app

COPY --chown=user requirements.txt .
USER user
RUN pip install --no-cache-dir --user -r requirements.txt
COPY --chown=user . .
# Warm the answers cache for the toy pair (examples, lessons: Compare, bars, α scan), so a visitor's first
# click is a cache hit. Same pair, dtype and device as CMD below: the keys hold the models' fingerprints
# and the runtime, so a Space serving another pair (MERGESCOPE_VLM) simply misses and computes.
RUN python -m ui.warm --examples --lessons --dtype auto --device cpu --cache-dir /home/user/app/runs/cache

EXPOSE 7860
CMD ["sh", "-c", "python app.py --host \"$GRADIO_SERVER_NAME\" --port \"$GRADIO_SERVER_PORT\" ${MERGESCOPE_VLM:+--vlm \"$MERGESCOPE_VLM\" --llm \"$MERGESCOPE_LLM\"} ${MERGESCOPE_BASE:+--base \"$MERGESCOPE_BASE\"} --device \"${MERGESCOPE_DEVICE:-cpu}\" --dtype \"${MERGESCOPE_DTYPE:-auto}\" --cache-dir /home/user/app/runs/cache --export-dir '' $([ \"${MERGESCOPE_PUBLIC:-1}\" = 0 ] && echo --i-know-this-is-open || echo --public)"]
