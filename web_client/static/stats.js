// What a viewer sees of a received feed's health, from RTCPeerConnection.getStats(): no DOM.

/**
 * @typedef {{delayMs: number, kbps: number, fps: number, lossPct: number, framesDecoded: number,
 *            samplesReceived: number, width: number, height: number}} FeedHealth
 */

/** Measures one peer connection's inbound video and audio between calls. */
export class HealthMeter {
  /** @param {RTCPeerConnection} pc */
  constructor(pc) {
    this.pc = pc;
    this.lastBytes = 0;
    this.lastTime = 0;
  }

  /** @returns {Promise<FeedHealth>} */
  async read() {
    const report = await this.pc.getStats();
    let bytes = 0;
    let fps = 0;
    let lost = 0;
    let received = 0;
    let framesDecoded = 0;
    let samplesReceived = 0;
    let jitterDelay = 0;
    let rtt = 0;
    let width = 0;
    let height = 0;
    report.forEach((/** @type {any} */ s) => {
      if (s.type === "inbound-rtp") {
        bytes += s.bytesReceived || 0;
        lost += Math.max(0, s.packetsLost || 0);
        received += s.packetsReceived || 0;
        if (s.kind === "video") {
          fps = s.framesPerSecond || fps;
          framesDecoded += s.framesDecoded || 0;
          // The size decoded: with simulcast, which layer this viewer's link is given.
          width = s.frameWidth || width;
          height = s.frameHeight || height;
          if (s.jitterBufferEmittedCount) jitterDelay = (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount;
        } else {
          samplesReceived += s.totalSamplesReceived || 0;
        }
      }
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime) rtt = 1000 * s.currentRoundTripTime;
    });
    const now = performance.now();
    const kbps = this.lastTime ? (8 * (bytes - this.lastBytes)) / (now - this.lastTime) : 0;
    this.lastBytes = bytes;
    this.lastTime = now;
    return {
      // Network one way (half the round trip) plus what waits in the jitter buffer.
      delayMs: Math.round(rtt / 2 + jitterDelay),
      kbps: Math.max(0, Math.round(kbps)),
      fps: Math.round(fps),
      lossPct: received + lost ? Math.round((1000 * lost) / (received + lost)) / 10 : 0,
      framesDecoded,
      samplesReceived,
      width,
      height,
    };
  }
}
