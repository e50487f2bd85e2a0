// A minimal Armoricore call client: phoenix.js for signaling, RTCPeerConnection
// for media. docs/calls.md walks through it. Served by the node at /assets/call.js.
import {Socket} from "/assets/phoenix.mjs"

/**
 * Join call `callId` with `media` (a MediaStream), showing remote tracks through
 * `onStream(participantId, stream)` / `onLeave(participantId)`.
 * Returns {pc, channel, leave()}.
 */
export function joinCall({token, callId, media, onStream = () => {}, onLeave = () => {}, log = () => {}}){
  const socket = new Socket("/socket", {params: {token}})
  socket.connect()
  const channel = socket.channel(`signaling:call:${callId}`, {})
  let pc = null

  // Signaling handlers are async; run them one after another so an offer from the
  // server is never applied while our own answer is still being applied.
  let queue = Promise.resolve()
  const serial = f => { queue = queue.then(f).catch(e => log(`error: ${e}`)) }

  channel.on("call_answer", ({sdp}) => serial(() => pc.setRemoteDescription({type: "answer", sdp})))
  channel.on("call_offer", ({sdp, offer_id, tracks}) => serial(async () => {
    log(`server offer ${offer_id}: ${tracks.length} remote track(s)`)
    await pc.setRemoteDescription({type: "offer", sdp})
    const answer = await pc.createAnswer()
    await pc.setLocalDescription(answer)
    channel.push("call_answer", {sdp: answer.sdp, type: "answer", offer_id})
  }))
  channel.on("participant_joined", ({user_id}) => log(`${user_id} joined`))
  channel.on("participant_left", ({participant_id, user_id, reason}) => {
    log(`${user_id} left (${reason})`)
    onLeave(participant_id)
  })
  channel.on("call_end", ({reason}) => log(`out of the call: ${reason}`))

  channel.join()
    .receive("ok", reply => serial(async () => {
      log(`joined as ${reply.participant_id}; ${reply.participants.length} already here`)
      pc = new RTCPeerConnection({iceServers: reply.ice_servers})
      pc.onicecandidate = ({candidate}) => channel.push("ice_candidate", candidate
        ? {candidate: candidate.candidate, sdp_mid: candidate.sdpMid, sdp_m_line_index: candidate.sdpMLineIndex}
        : {candidate: null})
      // The server names each forwarded stream after the participant who publishes it.
      pc.ontrack = ({streams}) => streams[0] && onStream(streams[0].id, streams[0])
      pc.onconnectionstatechange = () => log(`connection: ${pc.connectionState}`)
      for(const track of media.getTracks()){ pc.addTrack(track, media) }
      const offer = await pc.createOffer()
      await pc.setLocalDescription(offer)
      channel.push("call_offer", {sdp: offer.sdp, type: "offer"})
    }))
    .receive("error", ({reason}) => log(`join refused: ${reason}`))

  return {
    get pc(){ return pc },
    channel,
    // Say goodbye on the channel first: closing the peer connection reaches the
    // node over UDP sooner, and it would read as the connection going away.
    leave(){
      const close = () => { channel.leave(); pc?.close(); socket.disconnect() }
      channel.push("call_end", {}, 1000).receive("ok", close).receive("error", close).receive("timeout", close)
    },
  }
}

/** Bytes, packets and frames received so far, per kind (from getStats). */
export async function inboundStats(pc){
  const out = {audio: {bytes: 0, packets: 0, samples: 0, concealed: 0}, video: {bytes: 0, packets: 0, frames: 0}}
  if(!pc){ return out }
  for(const s of (await pc.getStats()).values()){
    if(s.type !== "inbound-rtp"){ continue }
    const k = out[s.kind]
    k.bytes += s.bytesReceived || 0
    k.packets += s.packetsReceived || 0
    if(s.kind === "video"){ k.frames += s.framesDecoded || 0 }
    if(s.kind === "audio"){
      // Decoded audio, and how much of it the decoder had to make up.
      k.samples += s.totalSamplesReceived || 0
      k.concealed += s.concealedSamples || 0
    }
  }
  return out
}
