-- wrk script for the paced latency targets (bench/warm.py): after each response, wait
-- WRK_PACE_MS milliseconds before the next request, so that one connection measures
-- a request's own time rather than a queue's (wrk starts the clock at the send).
local pause = tonumber(os.getenv("WRK_PACE_MS") or "20")

function delay()
  return pause
end
