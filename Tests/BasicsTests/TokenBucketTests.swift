import Basics
import Testing

@Suite struct TokenBucketTests {
    @Test func aBurstThenTheRate() {
        let t0 = ContinuousClock.now
        var bucket = TokenBucket(burst: 3, now: t0)
        let burst = (0..<5).map { _ in bucket.take(rate: 2, burst: 3, now: t0) }
        #expect(burst == [true, true, true, false, false])
        // Half a second at 2 a second: one more.
        let refill = bucket.take(rate: 2, burst: 3, now: t0 + .milliseconds(500))
        let again = bucket.take(rate: 2, burst: 3, now: t0 + .milliseconds(500))
        #expect(refill && !again)
        // A long pause refills to the burst, no further.
        let later = t0 + .seconds(60)
        let refilled = (0..<4).map { _ in bucket.take(rate: 2, burst: 3, now: later) }
        #expect(refilled == [true, true, true, false])
    }
}
