use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};

/// A socket that records each write call and takes at most `per_call` bytes per call, or none
/// (`Pending`) while `full`.
#[derive(Default)]
struct Socket {
    writes: Vec<Vec<u8>>,
    per_call: Option<usize>,
    full: bool,
    flushes: usize,
    shut: bool,
}

impl Socket {
    fn bytes(&self) -> Vec<u8> {
        self.writes.concat()
    }
}

impl AsyncWrite for Socket {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.full {
            return Poll::Pending;
        }
        let n = self.per_call.map_or(data.len(), |k| k.min(data.len()));
        self.writes.push(data[..n].to_vec());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flushes += 1;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut = true;
        Poll::Ready(Ok(()))
    }
}

#[derive(Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn cx_with(wakes: &Arc<Wakes>) -> Waker {
    Waker::from(wakes.clone())
}

fn write(c: &mut Coalesced<Socket>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
    Pin::new(c).poll_write(cx, data)
}

fn flush(c: &mut Coalesced<Socket>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    Pin::new(c).poll_flush(cx)
}

#[test]
fn answers_written_before_a_flush_reach_the_socket_in_one_write() {
    let wakes = Arc::new(Wakes::default());
    let waker = cx_with(&wakes);
    let mut cx = Context::from_waker(&waker);
    let mut c = Coalesced::new(Socket::default());
    assert!(matches!(write(&mut c, &mut cx, b"first "), Poll::Ready(Ok(6))));
    // The first flush with bytes held yields: Pending, after waking its own task.
    assert!(flush(&mut c, &mut cx).is_pending());
    assert_eq!((wakes.0.load(Ordering::SeqCst), c.inner.writes.len()), (1, 0));
    // Another answer arrives while the connection task waits its turn.
    let parts = [IoSlice::new(b"sec"), IoSlice::new(b"ond")];
    assert!(matches!(Pin::new(&mut c).poll_write_vectored(&mut cx, &parts), Poll::Ready(Ok(6))));
    assert!(matches!(flush(&mut c, &mut cx), Poll::Ready(Ok(()))));
    assert_eq!(c.inner.writes, vec![b"first second".to_vec()]);
    assert_eq!((c.held(), c.inner.flushes, wakes.0.load(Ordering::SeqCst)), (0, 1, 1));
    // Nothing held: a flush goes straight through, without yielding.
    assert!(matches!(flush(&mut c, &mut cx), Poll::Ready(Ok(()))));
    assert_eq!((c.inner.flushes, wakes.0.load(Ordering::SeqCst)), (2, 1));
}

#[test]
fn a_full_socket_keeps_the_bytes_until_it_takes_them() {
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut c = Coalesced::new(Socket { full: true, ..Socket::default() });
    assert!(write(&mut c, &mut cx, b"abc").is_ready());
    assert!(flush(&mut c, &mut cx).is_pending()); // the yield
    assert!(flush(&mut c, &mut cx).is_pending()); // the socket is full
    assert_eq!(c.held(), 3);
    c.inner.full = false;
    c.inner.per_call = Some(2); // and then takes 2 bytes per call
    assert!(matches!(flush(&mut c, &mut cx), Poll::Ready(Ok(()))));
    assert_eq!((c.inner.bytes(), c.inner.writes.len(), c.held()), (b"abc".to_vec(), 2, 0));
}

#[test]
fn a_write_past_the_bound_drains_first_and_keeps_the_order() {
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut c = Coalesced::new(Socket::default());
    let small = vec![1u8; COALESCE_BUF_MAX - 10];
    assert!(write(&mut c, &mut cx, &small).is_ready());
    assert_eq!(c.inner.writes.len(), 0);
    // 20 more bytes would overflow the bound: the held ones go out first, these are held.
    assert!(matches!(write(&mut c, &mut cx, &[2u8; 20]), Poll::Ready(Ok(20))));
    assert_eq!((c.inner.writes.len(), c.held()), (1, 20));
    // A write as large as the bound bypasses the buffer, after what is held.
    let big = vec![3u8; COALESCE_BUF_MAX];
    assert!(matches!(write(&mut c, &mut cx, &big), Poll::Ready(Ok(n)) if n == COALESCE_BUF_MAX));
    assert_eq!(c.held(), 0);
    let want: Vec<u8> = [small, vec![2u8; 20], big].concat();
    assert_eq!(c.inner.bytes(), want);
    // Drained, the burst's buffer is given back.
    assert!(c.buf.capacity() <= COALESCE_KEEP_BYTES, "{}", c.buf.capacity());
}

#[test]
fn a_drained_connection_keeps_a_small_buffer_and_gives_a_burst_s_back() {
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut c = Coalesced::new(Socket::default());
    for (len, kept) in [(1000, true), (COALESCE_KEEP_BYTES + 1, false)] {
        assert!(write(&mut c, &mut cx, &vec![7u8; len]).is_ready());
        assert!(flush(&mut c, &mut cx).is_pending());
        assert!(flush(&mut c, &mut cx).is_ready());
        assert_eq!(c.held(), 0);
        let cap = c.buf.capacity();
        assert_eq!(cap > 0, kept, "after {len} bytes: capacity {cap}");
        assert!(cap <= COALESCE_KEEP_BYTES);
    }
    assert_eq!(c.inner.bytes().len(), 1000 + COALESCE_KEEP_BYTES + 1);
}

#[test]
fn shutdown_writes_what_is_held_first() {
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut c = Coalesced::new(Socket::default());
    assert!(write(&mut c, &mut cx, b"last words").is_ready());
    assert!(matches!(Pin::new(&mut c).poll_shutdown(&mut cx), Poll::Ready(Ok(()))));
    assert_eq!((c.inner.bytes(), c.inner.shut), (b"last words".to_vec(), true));
}

#[test]
fn a_socket_that_takes_nothing_is_an_error_not_a_spin() {
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut c = Coalesced::new(Socket { per_call: Some(0), ..Socket::default() });
    assert!(write(&mut c, &mut cx, b"x").is_ready());
    assert!(flush(&mut c, &mut cx).is_pending());
    match flush(&mut c, &mut cx) {
        Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::WriteZero),
        other => panic!("want WriteZero, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_flush_on_an_idle_runtime_completes_without_outside_help() {
    // The yield wakes its own task: with nothing else to run, the flush finishes by itself.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let mut a = Coalesced::new(a);
    for i in 0..100u8 {
        a.write_all(&[i]).await.unwrap();
    }
    a.flush().await.unwrap();
    let mut got = [0u8; 100];
    b.read_exact(&mut got).await.unwrap();
    assert!(got.iter().enumerate().all(|(i, &x)| x == i as u8));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One step of a writer and its socket.
    #[derive(Clone, Debug)]
    enum Step {
        /// The writer writes this many bytes (vectored when `vectored`).
        Write { len: usize, vectored: bool },
        /// The writer flushes (h2 at the end of its poll), polling again while the flush yields.
        Flush,
        /// The socket takes at most this many bytes per call from now on (0: it is full).
        Socket(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0usize..3 * COALESCE_BUF_MAX / 2, any::<bool>())
                .prop_map(|(len, vectored)| Step::Write { len, vectored }),
            2 => Just(Step::Flush),
            1 => prop_oneof![Just(0usize), 1usize..100, Just(usize::MAX)].prop_map(Step::Socket),
        ]
    }

    proptest! {
        /// Whatever the writes, flushes and socket: bytes reach the socket in order, none twice,
        /// the buffer never passes its bound, a flush completes only with nothing held, and a
        /// flush yields at most once before it writes.
        #[test]
        fn bytes_arrive_in_order_within_the_bound(steps in proptest::collection::vec(step(), 1..40)) {
            let waker = Waker::noop();
            let mut cx = Context::from_waker(waker);
            let mut c = Coalesced::new(Socket::default());
            let (mut sent, mut next) = (Vec::new(), 0u8);
            for s in steps {
                match s {
                    Step::Write { len, vectored } => {
                        let data: Vec<u8> = (0..len).map(|i| next.wrapping_add(i as u8)).collect();
                        let r = if vectored && len > 1 {
                            let (a, b) = data.split_at(len / 2);
                            Pin::new(&mut c).poll_write_vectored(&mut cx, &[IoSlice::new(a), IoSlice::new(b)])
                        } else {
                            write(&mut c, &mut cx, &data)
                        };
                        if let Poll::Ready(Ok(n)) = r {
                            prop_assert!(n <= len);
                            sent.extend_from_slice(&data[..n]);
                            next = next.wrapping_add(n as u8);
                        }
                    }
                    Step::Flush => {
                        let mut pending = 0;
                        while flush(&mut c, &mut cx).is_pending() {
                            pending += 1;
                            if c.inner.full || c.inner.per_call == Some(0) {
                                break; // the socket takes nothing: a real task would wait
                            }
                            prop_assert!(pending <= 1, "yielded {pending} times with a socket that takes bytes");
                        }
                        if !c.inner.full && c.inner.per_call != Some(0) {
                            prop_assert_eq!(c.held(), 0);
                        }
                    }
                    Step::Socket(0) => c.inner.full = true,
                    Step::Socket(k) => {
                        c.inner.full = false;
                        c.inner.per_call = (k != usize::MAX).then_some(k);
                    }
                }
                prop_assert!(c.buf.len() <= COALESCE_BUF_MAX);
                let got = c.inner.bytes();
                prop_assert_eq!(&got[..], &sent[..got.len()], "the socket's bytes are a prefix of what was written");
                prop_assert_eq!(got.len() + c.held(), sent.len());
            }
        }
    }
}
