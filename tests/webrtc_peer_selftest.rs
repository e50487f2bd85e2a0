//! Self-test of the WebRTC test client (`tests/common/webrtc_peer.rs`): two peers connect to
//! each other on loopback, exchange RTP both ways, and renegotiate.

#[path = "common/webrtc_peer.rs"]
mod webrtc_peer;

use std::time::Duration;

use webrtc_peer::{IceCandidate, Kind, PeerOptions, Received, WebrtcPeer, vp8_payload};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Forwards `from`'s local candidates to `to` for as long as `from` gathers.
fn trickle(from: &WebrtcPeer, to: &WebrtcPeer) {
    let mut candidates = from.candidates();
    let to = to.clone();
    tokio::spawn(async move {
        while let Some(IceCandidate {
            candidate,
            sdp_mid,
            sdp_m_line_index,
        }) = candidates.recv().await
        {
            to.add_remote_candidate(&candidate, sdp_mid, sdp_m_line_index)
                .await
                .expect("add remote candidate");
        }
    });
}

fn audio_payload(i: usize) -> Vec<u8> {
    let mut payload = b"opus".to_vec();
    payload.extend_from_slice(&(i as u32).to_be_bytes());
    payload.extend((0..40).map(|b| (b * 7 + i) as u8));
    payload
}

fn video_payload(i: usize) -> Vec<u8> {
    let mut body = b"vp8-frame".to_vec();
    body.extend_from_slice(&(i as u32).to_be_bytes());
    body.extend((0..300).map(|b| (b * 3 + i) as u8));
    vp8_payload(i.is_multiple_of(10), &body)
}

/// The track of `kind` from `stream_id`, if received.
fn track<'a>(received: &'a [Received], stream_id: &str, kind: Kind) -> Option<&'a Received> {
    received
        .iter()
        .find(|r| r.stream_id == stream_id && r.kind == kind)
}

fn has_payloads(received: &[Received], stream_id: &str, kind: Kind, count: usize) -> bool {
    track(received, stream_id, kind).is_some_and(|r| r.packets.len() >= count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_exchange_rtp_and_renegotiate() {
    let a = WebrtcPeer::new(PeerOptions {
        audio: true,
        video: true,
    })
    .await
    .expect("peer A");
    let b = WebrtcPeer::new(PeerOptions::default())
        .await
        .expect("peer B");
    trickle(&a, &b);
    trickle(&b, &a);

    // A offers audio + video; B, with no tracks, answers receive-only.
    let offer = a.create_offer().await.expect("A offer");
    assert!(offer.contains("a=rtpmap:111 opus/48000/2"), "{offer}");
    assert!(offer.contains("a=rtpmap:96 VP8/90000"), "{offer}");
    assert!(offer.contains("a=rtcp-fb:96 nack pli"), "{offer}");
    assert!(offer.contains("a=rtpmap:97 rtx/90000"), "{offer}");
    assert!(
        !offer.contains("a=candidate"),
        "trickle: no candidates in the SDP"
    );
    let answer = b.apply_offer(&offer).await.expect("B answer");
    assert!(answer.contains("a=recvonly"), "{answer}");
    a.apply_answer(&answer).await.expect("A applies answer");
    a.wait_connected(TIMEOUT).await.expect("A connected");
    b.wait_connected(TIMEOUT).await.expect("B connected");

    // A sends 50 audio and 50 video packets; B gets them byte for byte.
    const N: usize = 50;
    for i in 0..N {
        a.send(Kind::Audio, &audio_payload(i), false)
            .await
            .expect("send audio");
        a.send(Kind::Video, &video_payload(i), true)
            .await
            .expect("send video");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let a_stream = a.local_stream_id().to_owned();
    let received = b
        .wait_for(
            |r| {
                has_payloads(r, &a_stream, Kind::Audio, N)
                    && has_payloads(r, &a_stream, Kind::Video, N)
            },
            TIMEOUT,
        )
        .await
        .expect("B receives A's media");
    let audio = track(&received, &a_stream, Kind::Audio).unwrap();
    let video = track(&received, &a_stream, Kind::Video).unwrap();
    assert_eq!(
        audio.payloads(),
        (0..N).map(audio_payload).collect::<Vec<_>>()
    );
    assert_eq!(
        video.payloads(),
        (0..N).map(video_payload).collect::<Vec<_>>()
    );
    assert_eq!(Some(audio.ssrc), a.local_ssrc(Kind::Audio).await);
    assert_eq!(Some(video.ssrc), a.local_ssrc(Kind::Video).await);
    assert!(audio.packets.iter().all(|p| p.payload_type == 111));
    assert!(
        video
            .packets
            .iter()
            .all(|p| p.payload_type == 96 && p.marker)
    );
    for pair in audio.packets.windows(2) {
        assert_eq!(
            pair[1].sequence_number,
            pair[0].sequence_number.wrapping_add(1)
        );
        assert_eq!(pair[1].timestamp, pair[0].timestamp.wrapping_add(960));
    }
    for pair in video.packets.windows(2) {
        assert_eq!(
            pair[1].sequence_number,
            pair[0].sequence_number.wrapping_add(1)
        );
        assert_eq!(pair[1].timestamp, pair[0].timestamp.wrapping_add(3000));
    }
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(!audio.track_id.is_empty() && audio.track_id != video.track_id);

    // B adds audio and video tracks and renegotiates: B offers, A answers.
    b.add_track(Kind::Audio).await.expect("B adds audio");
    b.add_track(Kind::Video).await.expect("B adds video");
    let offer = b.create_offer().await.expect("B offer");
    let answer = a.apply_offer(&offer).await.expect("A answer");
    b.apply_answer(&answer).await.expect("B applies answer");

    const M: usize = 30;
    for i in 0..M {
        b.send(Kind::Audio, &audio_payload(1000 + i), false)
            .await
            .expect("B sends audio");
        // Two packets per video frame: the marker closes the frame.
        let frame = video_payload(1000 + i);
        let (first, second) = frame.split_at(frame.len() / 2);
        b.send(Kind::Video, first, false)
            .await
            .expect("B sends video");
        b.send(Kind::Video, second, true)
            .await
            .expect("B sends video");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let b_stream = b.local_stream_id().to_owned();
    let received = a
        .wait_for(
            |r| {
                has_payloads(r, &b_stream, Kind::Audio, M)
                    && has_payloads(r, &b_stream, Kind::Video, 2 * M)
            },
            TIMEOUT,
        )
        .await
        .expect("A receives B's media");
    let audio = track(&received, &b_stream, Kind::Audio).unwrap();
    let video = track(&received, &b_stream, Kind::Video).unwrap();
    assert_eq!(
        audio.payloads(),
        (0..M).map(|i| audio_payload(1000 + i)).collect::<Vec<_>>()
    );
    let frames: Vec<Vec<u8>> = video
        .payloads()
        .chunks(2)
        .map(|halves| halves.concat())
        .collect();
    assert_eq!(
        frames,
        (0..M).map(|i| video_payload(1000 + i)).collect::<Vec<_>>()
    );
    for frame in video.packets.chunks(2) {
        assert!(!frame[0].marker && frame[1].marker);
        assert_eq!(frame[0].timestamp, frame[1].timestamp);
    }

    // A's media still flows after the renegotiation.
    a.send(Kind::Audio, b"after renegotiation", false)
        .await
        .expect("send audio");
    b.wait_for(
        |r| {
            track(r, &a_stream, Kind::Audio)
                .and_then(|t| t.packets.last())
                .is_some_and(|p| p.payload == b"after renegotiation")
        },
        TIMEOUT,
    )
    .await
    .expect("B still receives A's audio");

    a.close().await.expect("close A");
    b.close().await.expect("close B");
}

/// The remote side's re-offer adds a new m-line (as the SFU does for each new publisher):
/// the answerer gets a new receiving track.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_offer_adding_an_m_line_is_received() {
    let a = WebrtcPeer::new(PeerOptions {
        audio: true,
        video: false,
    })
    .await
    .expect("peer A");
    let b = WebrtcPeer::new(PeerOptions::default())
        .await
        .expect("peer B");
    trickle(&a, &b);
    trickle(&b, &a);

    let offer = a.create_offer().await.expect("A offer");
    assert_eq!(offer.matches("m=").count(), 1, "{offer}");
    let answer = b.apply_offer(&offer).await.expect("B answer");
    a.apply_answer(&answer).await.expect("A applies answer");
    a.wait_connected(TIMEOUT).await.expect("A connected");
    b.wait_connected(TIMEOUT).await.expect("B connected");

    // B has no video transceiver yet, so its video track gets a new m-line.
    b.add_track(Kind::Video).await.expect("B adds video");
    let offer = b.create_offer().await.expect("B offer");
    assert_eq!(offer.matches("m=video").count(), 1, "{offer}");
    let answer = a.apply_offer(&offer).await.expect("A answer");
    let video_section = &answer[answer.find("m=video").expect("video m-line")..];
    assert!(video_section.contains("a=recvonly"), "{answer}");
    b.apply_answer(&answer).await.expect("B applies answer");

    for i in 0..20 {
        b.send(Kind::Video, &video_payload(i), true)
            .await
            .expect("B sends video");
        a.send(Kind::Audio, &audio_payload(i), false)
            .await
            .expect("A sends audio");
    }
    let b_stream = b.local_stream_id().to_owned();
    let a_stream = a.local_stream_id().to_owned();
    let received = a
        .wait_for(|r| has_payloads(r, &b_stream, Kind::Video, 20), TIMEOUT)
        .await
        .expect("A receives B's video");
    assert_eq!(
        track(&received, &b_stream, Kind::Video).unwrap().payloads(),
        (0..20).map(video_payload).collect::<Vec<_>>()
    );
    b.wait_for(|r| has_payloads(r, &a_stream, Kind::Audio, 20), TIMEOUT)
        .await
        .expect("B receives A's audio");

    a.close().await.expect("close A");
    b.close().await.expect("close B");
}
